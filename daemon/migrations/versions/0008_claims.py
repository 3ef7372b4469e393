"""source claims: several daemons on one PostgreSQL ledger share the sources, each source
synced by one daemon per cycle, a dead daemon's claim taken over when its lease runs out

Revision ID: 0008_claims
Revises: 0007_requests
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0008_claims'
down_revision = '0007_requests'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table('source_claims'):
        return
    op.create_table(
        'source_claims',
        sa.Column('source', sa.String(length=200), primary_key=True),
        sa.Column('cycle', sa.String(length=64), nullable=True),
        sa.Column('holder', sa.String(length=200), nullable=True),
        sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('source_claims')
