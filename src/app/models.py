"""Every model of the application, in one place: Alembic autogenerate and ``create_all`` read this metadata."""

from app.auth.models import TokenBlacklist
from app.core.db import metadata
from app.posts.models import Post
from app.tiers.models import RateLimit, Tier
from app.users.models import User

__all__ = ["Post", "RateLimit", "Tier", "TokenBlacklist", "User", "metadata"]
