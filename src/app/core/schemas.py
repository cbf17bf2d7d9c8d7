"""Bodies and parameters shared by every feature: action messages, pagination, row → Struct (SPEC §1.4, §1.5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import FromQuery, QueryParameter

from app.core.fields import DB_INT_MAX

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)


class Message(msgspec.Struct):
    message: str


def to_struct(row: Any, schema: type[S]) -> S:
    """A response Struct from an ORM row: only the Struct's fields are read, so nothing else can leak."""
    return msgspec.convert(row, schema, from_attributes=True)


class Page(msgspec.Struct, Generic[T]):
    data: list[T]
    total_count: int
    has_more: bool
    page: int
    items_per_page: int


# SPEC §1.5 [Δ]: bounded, so page=0 or a huge page is a 422 instead of a 500, and the offset fits a bigint.
PageNumber = Annotated[int, QueryParameter(ge=1, le=DB_INT_MAX, description="Page number, from 1.")]
ItemsPerPage = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page, 1 to 100.")]


class Pagination(msgspec.Struct, frozen=True):
    """The validated ``page`` and ``items_per_page`` of a list route; handlers take it as ``pagination``."""

    page: int
    items_per_page: int

    @property
    def limit(self) -> int:
        return self.items_per_page

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.items_per_page

    def page_of(self, rows: Iterable[Any], total: int, schema: type[S]) -> Page[S]:
        """The SPEC §1.5 body for one page of ``rows``, each converted to ``schema``."""
        return Page(
            data=[to_struct(row, schema) for row in rows],
            total_count=total,
            has_more=self.page * self.items_per_page < total,
            page=self.page,
            items_per_page=self.items_per_page,
        )


PAGINATION_DEFAULTS = {"page": 1, "items_per_page": 10}
"""SPEC §1.5; also what a cached list's key uses for an omitted parameter (SPEC §6.2)."""


def provide_pagination(
    page: FromQuery[PageNumber] = PAGINATION_DEFAULTS["page"],
    items_per_page: FromQuery[ItemsPerPage] = PAGINATION_DEFAULTS["items_per_page"],
) -> Pagination:
    """The ``pagination`` dependency (registered app-wide): a list route only declares the parameter."""
    return Pagination(page=page, items_per_page=items_per_page)
