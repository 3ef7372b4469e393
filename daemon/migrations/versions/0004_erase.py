"""email forms: the raw forms of an email seen upstream, and subjects keyed by the new
normalisation (composed, lower-cased, no non-ASCII character turned ASCII)

Subjects written before this revision were keyed by `strip().lower()` alone, so one person
whose address a system holds decomposed (e + U+0301) and another holds composed (é) had two
subjects. They are merged here into the subject of the new key, and the old key is kept as a
form of it (Mailchimp's subscriber hash is the MD5 of exactly that lower-cased form).
ASCII keys cannot change: they are skipped.

Revision ID: 0004_erase
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = '0004_erase'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('email_forms',
    sa.Column('form', sa.String(length=320), nullable=False),
    sa.Column('subject_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], ),
    sa.PrimaryKeyConstraint('form')
    )
    with op.batch_alter_table('email_forms', schema=None) as batch_op:
        batch_op.create_index('ix_email_forms_subject', ['subject_id'], unique=False)
    rekey_subjects(op.get_bind())


def rekey_subjects(connection: sa.Connection) -> None:
    """Give every subject the key of the current normalisation, merging subjects that now
    share one (their holdings and findings move to the one kept)."""
    # The normalisation this revision introduces (connectors/base.py).
    from connectors.base import normalise_email

    rows = connection.execute(sa.text("SELECT id, email FROM subjects")).all()
    keys = {email: ident for ident, email in rows}
    for ident, email in rows:
        if email.isascii():
            continue
        key = normalise_email(email)
        if key is None or key == email:
            continue
        target = keys.get(key)
        if target is None:
            connection.execute(sa.text("UPDATE subjects SET email = :key WHERE id = :id"),
                               {"key": key, "id": ident})
            keys[key] = ident
            target = ident
        else:
            moved = {"old": ident, "new": target}
            for table in ("holdings", "findings", "email_forms"):
                connection.execute(sa.text(
                    f"UPDATE {table} SET subject_id = :new WHERE subject_id = :old"),  # noqa: S608
                    moved)
            connection.execute(sa.text(
                "UPDATE subjects SET first_seen = (SELECT MIN(first_seen) FROM subjects "
                "WHERE id IN (:old, :new)), last_seen = (SELECT MAX(last_seen) FROM subjects "
                "WHERE id IN (:old, :new)) WHERE id = :new"), moved)
            connection.execute(sa.text("DELETE FROM subjects WHERE id = :old"), moved)
        del keys[email]
        connection.execute(sa.text(
            "INSERT INTO email_forms (form, subject_id) VALUES (:form, :id) "
            "ON CONFLICT (form) DO NOTHING"), {"form": email, "id": target})


def downgrade() -> None:
    with op.batch_alter_table('email_forms', schema=None) as batch_op:
        batch_op.drop_index('ix_email_forms_subject')
    op.drop_table('email_forms')
