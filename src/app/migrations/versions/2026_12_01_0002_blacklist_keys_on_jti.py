"""token_blacklist keys on the token's jti (or a refresh family id) instead of the encoded token

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 09:40:00+00:00

SPEC §2.5 (amended 2026-12-01): one JWT has many valid spellings, so rows holding encoded tokens could be
bypassed. The column keeps its name and type; its meaning changes. The old rows are dropped: they revoke
tokens without a `uid` claim, which the app no longer accepts at all (SPEC §3.2), so nothing is lost.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM token_blacklist")


def downgrade() -> None:
    # jti values mean nothing to the previous revision's code, which compares encoded tokens.
    op.execute("DELETE FROM token_blacklist")
