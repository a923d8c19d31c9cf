"""The one error the client raises for API answers, and how it reads an error response."""

from __future__ import annotations

import httpx


class ApiError(Exception):
    """The API answered with an error (or could not be reached: status 0).

    `str(error)` is the server's `detail` message, which names what was wrong.
    """

    def __init__(self, status: int, detail: str, *, method: str = "", url: str = "") -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url

    def __repr__(self) -> str:
        return f"ApiError(status={self.status}, detail={self.detail!r})"


def retry_after(response: httpx.Response, default: float) -> float:
    """The seconds a response's Retry-After asks for (between 0.1 and 30), else `default`."""
    try:
        return min(max(float(response.headers.get("Retry-After", default)), 0.1), 30.0)
    except ValueError:
        return default


def detail_of(response: httpx.Response) -> str:
    """A readable message from an error response (FastAPI's `detail`, string or list)."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:500] or f"HTTP {response.status_code} {response.reason_phrase}"
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, list):  # pydantic validation errors
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p != "body")
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)
