"""policy: what each shop runs and how it cleans up — its active plugins, its own privacy
settings and whether they could be read — so that the audit can compare them with [policy]

Revision ID: 0006_policy
Revises: 0005_source_label
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0006_policy'
down_revision = '0005_source_label'
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if 'shop_plugins' not in existing:
        op.create_table(
            'shop_plugins',
            sa.Column('id', sa.Integer(), primary_key=True),
            sa.Column('source_id', sa.Integer(), sa.ForeignKey('sources.id'), nullable=False),
            sa.Column('plugin', sa.String(length=300), nullable=False),
            sa.Column('slug', sa.String(length=200), nullable=False),
            sa.Column('name', sa.String(length=300), nullable=False),
            sa.Column('version', sa.String(length=60), nullable=True),
            sa.Column('read_at', sa.DateTime(timezone=True), nullable=False),
            sa.UniqueConstraint('source_id', 'plugin', name='uq_shop_plugin'))
    if 'shop_options' not in existing:
        op.create_table(
            'shop_options',
            sa.Column('source_id', sa.Integer(), sa.ForeignKey('sources.id'), primary_key=True),
            sa.Column('option', sa.String(length=100), primary_key=True),
            sa.Column('readable', sa.Boolean(), nullable=False),
            sa.Column('period_seconds', sa.Integer(), nullable=True),
            sa.Column('value', sa.String(length=100), nullable=True),
            sa.Column('read_at', sa.DateTime(timezone=True), nullable=False))
    if 'shop_reads' not in existing:
        op.create_table(
            'shop_reads',
            sa.Column('source_id', sa.Integer(), sa.ForeignKey('sources.id'), primary_key=True),
            sa.Column('part', sa.String(length=40), primary_key=True),
            sa.Column('ok', sa.Boolean(), nullable=False),
            sa.Column('detail', sa.Text(), nullable=True),
            sa.Column('read_at', sa.DateTime(timezone=True), nullable=False))


def downgrade() -> None:
    for table in ('shop_reads', 'shop_options', 'shop_plugins'):
        op.drop_table(table)
