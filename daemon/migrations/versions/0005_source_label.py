"""source labels: the name a person knows a source by (a Mailchimp audience's name), so that
the email names audiences by name rather than by id

Revision ID: 0005_source_label
Revises: 0004_erase
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0005_source_label'
down_revision = '0004_erase'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A ledger stamped back to an older revision (a restore, a test) may have it already.
    if 'label' in {c['name'] for c in sa.inspect(op.get_bind()).get_columns('sources')}:
        return
    with op.batch_alter_table('sources') as batch:
        batch.add_column(sa.Column('label', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sources') as batch:
        batch.drop_column('label')
