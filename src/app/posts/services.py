"""Post business rules (SPEC §4.4)."""

from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from app.posts.models import Post


class PostService(SQLAlchemyAsyncRepositoryService[Post]):
    class Repo(SQLAlchemyAsyncRepository[Post]):
        model_type = Post

    repository_type = Repo
