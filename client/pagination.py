"""Cursor pagination, written once: the client's `iter_*` methods, the CLI's `--all` and the
UI's lists all walk pages with these helpers.

A list method of the client takes `limit` and `cursor` keywords (plus its filters) and returns
a `Page`; the next page is asked for with the previous page's `next_cursor` until there is none
(or a page comes back empty). Every page is fetched once, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

PAGE_SIZE = 100


class Page(BaseModel, Generic[T]):
    """One page of a list: its items and the cursor of the next page (None on the last)."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    items: list[T] = Field(default_factory=list)
    next_cursor: str | None = None


ListPage = Callable[..., Page[T]]  # list_page(limit=..., cursor=..., **filters) -> Page[T]


def pages(
    list_page: ListPage[T],
    *,
    page_size: int = PAGE_SIZE,
    max_items: int | None = None,
    **filters: Any,
) -> Iterator[Page[T]]:
    """The pages of a list, first to last, each fetched once with `limit` and `cursor`.

    Stops after the page without a `next_cursor` (or an empty page), or once `max_items` items
    came back; the last request asks only for the items still wanted.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be at least 1, not {page_size}")
    cursor: str | None = None
    seen = 0
    while max_items is None or seen < max_items:
        size = page_size if max_items is None else min(page_size, max_items - seen)
        page = list_page(limit=size, cursor=cursor, **filters)
        yield page
        seen += len(page.items)
        if not page.next_cursor or not page.items:
            return
        cursor = page.next_cursor


def walk(
    list_page: ListPage[T],
    *,
    page_size: int = PAGE_SIZE,
    max_items: int | None = None,
    **filters: Any,
) -> Iterator[T]:
    """Every item of a list (or the first `max_items`), following the cursor page by page."""
    for page in pages(list_page, page_size=page_size, max_items=max_items, **filters):
        yield from page.items


def collect(
    list_page: ListPage[T], *, limit: int, page_size: int = PAGE_SIZE, **filters: Any
) -> tuple[list[T], bool]:
    """(up to `limit` items, whether the list has more) — for views that show a bounded list."""
    items: list[T] = []
    more = False
    for page in pages(list_page, page_size=page_size, max_items=limit, **filters):
        items.extend(page.items)
        more = bool(page.next_cursor and page.items)
    return items[:limit], more or len(items) > limit
