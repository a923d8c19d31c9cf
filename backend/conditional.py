"""Conditional GET (RFC 9110, sections 8.8.3 and 13.1.2) for the reads pollers repeat.

A read answers with an `ETag`, a digest of the exact body it sends; a request whose
`If-None-Match` names that tag gets `304 Not Modified` with no body. A poller (the run page, a
script following a run) that keeps the last body and its tag then receives a few header bytes
while nothing changed, instead of the run or every point again, and skips decoding them.

The tag is of the body, not of a version column: it is right by construction for every read
(a run's progress, a point written by the worker or by hand, another page of runs), whatever
wrote the rows. The server still reads and encodes the body (a few hundred microseconds,
`docs/benchmarks.md`); hashing 30 KB with BLAKE2b costs about 30 microseconds.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import Annotated, Any

from fastapi import Header, Response

IfNoneMatch = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        description="The `ETag` of the body you hold: 304 with no body while it is unchanged.",
    ),
]

NOT_MODIFIED: dict[int | str, dict[str, Any]] = {
    304: {
        "description": "Not modified: the body is the one whose `ETag` you sent in "
        "`If-None-Match` (no body; keep yours)",
        "headers": {"ETag": {"description": "The body's tag.", "schema": {"type": "string"}}},
    }
}


def etag_of(body: bytes) -> str:
    """A strong tag of `body` (quoted, as the header carries it): 96 bits of BLAKE2b."""
    return '"' + blake2b(body, digest_size=12).hexdigest() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether `If-None-Match` names `etag` or is `*` (weak comparison: `W/` is ignored)."""
    if not if_none_match:
        return False
    tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
    return "*" in tags or etag in tags


def json_or_not_modified(body: bytes, if_none_match: str | None) -> Response:
    """`body` as JSON with its `ETag`; or 304 with the tag alone when the caller holds it.

    `Cache-Control: private, no-cache` lets a browser or client keep the body but makes it ask
    again every time (the run changes while it trains): the 304 is what makes asking cheap.
    """
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
