"""live holdings by source and categories: the email's matrix (records, people and people
per category in each source) and the card-number rule read this index alone, not the table

Revision ID: 0009_live_holdings
Revises: 0008_claims
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = '0009_live_holdings'
down_revision = '0008_claims'
branch_labels = None
depends_on = None

LIVE = sa.text('gone_at IS NULL')


def upgrade() -> None:
    existing = {index['name'] for index in sa.inspect(op.get_bind()).get_indexes('holdings')}
    if 'ix_holdings_live' in existing:
        return
    op.create_index('ix_holdings_live', 'holdings', ['source_id', 'categories', 'subject_id'],
                    unique=False, sqlite_where=LIVE, postgresql_where=LIVE)


def downgrade() -> None:
    op.drop_index('ix_holdings_live', table_name='holdings')
