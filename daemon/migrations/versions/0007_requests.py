"""requests: the register of access and erasure requests (due dates, extensions), the memory
of who was erased (a keyed hash and a date, nothing else), and each subject's keyed hash so
that the audit can match a returning person in SQL

Revision ID: 0007_requests
Revises: 0006_policy
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0007_requests'
down_revision = '0006_policy'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A ledger stamped back to an older revision (a restore, a test) may have them already.
    inspector = sa.inspect(op.get_bind())
    if inspector.has_table('requests'):
        return
    op.create_table(
        'requests',
        sa.Column('id', sa.String(length=12), nullable=False),
        sa.Column('kind', sa.String(length=20), nullable=False),
        sa.Column('person', sa.String(length=40), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('extended_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('extension_reason', sa.Text(), nullable=True),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'))
    op.create_index('ix_requests_person_status', 'requests', ['person', 'status'])
    op.create_table(
        'erasures',
        sa.Column('person', sa.String(length=40), nullable=False),
        sa.Column('erased_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('person'))
    with op.batch_alter_table('subjects') as batch:
        batch.add_column(sa.Column('person_ref', sa.String(length=40), nullable=True))
        batch.create_index('ix_subjects_person_ref', ['person_ref'])


def downgrade() -> None:
    with op.batch_alter_table('subjects') as batch:
        batch.drop_index('ix_subjects_person_ref')
        batch.drop_column('person_ref')
    op.drop_table('erasures')
    op.drop_index('ix_requests_person_status', table_name='requests')
    op.drop_table('requests')
