"""Bodies shared by every feature: action messages and pages of results (SPEC §1.4, §1.5)."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

import msgspec
from litestar.params import QueryParameter

T = TypeVar("T")


class Message(msgspec.Struct):
    message: str


class Page(msgspec.Struct, Generic[T]):
    data: list[T]
    total_count: int
    has_more: bool
    page: int
    items_per_page: int


# SPEC §1.5 [Δ]: bounded, so page=0 or a huge page size is a 422 instead of a 500 or a table scan.
PageNumber = Annotated[int, QueryParameter(ge=1, description="Page number, from 1.")]
ItemsPerPage = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page, 1 to 100.")]


def page_of(data: list[T], total: int, page: int, items_per_page: int) -> Page[T]:
    return Page(
        data=data,
        total_count=total,
        has_more=page * items_per_page < total,
        page=page,
        items_per_page=items_per_page,
    )
