"""Sign-in throttling, with the `limits` library and its Redis storage on the broker URL.

Every password attempt counts (before the password is checked, so parallel guesses cannot slip
between a check and a count) against two moving windows:

- the (account, client address) pair: `DS_LOGIN_LIMIT_ACCOUNT_ADDRESS` (default 10 in 5
  minutes). A right password clears it. Other addresses are not affected, so a guesser cannot
  lock the real user out of the account from elsewhere;
- the client address, whatever the account: `DS_LOGIN_LIMIT_ADDRESS` (default 100 in 5
  minutes), against one address trying many accounts.

Past a limit the API answers 429 with `Retry-After` (seconds until the window lets one attempt
through again). Because the counters live in Redis, every API process of the studio shares them.
Usernames count whether they exist or not (the answer tells nobody which ones do).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, RateLimitItemPerSecond, parse
from limits.errors import StorageError
from limits.storage import RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter

from backend.errors import ApiError, Unavailable
from core.settings import get_settings

NAMESPACE = "ds-login"


class TooManyAttempts(ApiError):
    """429: too many sign-in attempts; `Retry-After` says when to try again."""

    status_code = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


@dataclass(frozen=True)
class Refusal:
    """A refused attempt: which limit, and for how many seconds more."""

    limit: str  # "account_address" | "address"
    retry_after: int
    first: bool  # the first refusal of this window (what the audit log records)


@lru_cache(maxsize=8)
def _storage(uri: str) -> Storage:
    """One `limits` Redis storage per broker URL (the URL may be redis:// or valkey://)."""
    if uri.startswith("valkey"):
        uri = "redis" + uri[len("valkey") :]
    return RedisStorage(uri, key_prefix=NAMESPACE, wrap_exceptions=True)


def _limiter() -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(_storage(get_settings().broker_url))


def _item(setting: str, value: str) -> RateLimitItem:
    try:
        return parse(value)
    except ValueError:
        raise Unavailable(
            f"DS_{setting.upper()}={value!r} is not a rate limit; the server admin should set it "
            "like '10/5 minutes'"
        ) from None


def _retry_after(limiter: MovingWindowRateLimiter, item: RateLimitItem, *ids: str) -> int:
    reset = limiter.get_window_stats(item, *ids).reset_time
    return max(1, math.ceil(reset - time.time()))


def check(username: str, address: str) -> Refusal | None:
    """Count one attempt of `username` from `address`; a Refusal when a limit is exceeded."""
    settings = get_settings()
    pair = _item("login_limit_account_address", settings.login_limit_account_address)
    per_address = _item("login_limit_address", settings.login_limit_address)
    key = username.strip().lower()
    limiter = _limiter()
    try:
        for name, item, ids in (
            ("address", per_address, ("address", address)),
            ("account_address", pair, ("pair", key, address)),
        ):
            if not limiter.hit(item, *ids):
                once = RateLimitItemPerSecond(1, item.get_expiry())
                first = limiter.hit(once, "refused", name, *ids[1:])
                return Refusal(name, _retry_after(limiter, item, *ids), first)
    except StorageError as exc:
        raise Unavailable(
            "sign-in is throttled through the broker, which does not answer "
            f"({type(exc.storage_error).__name__}); check DS_BROKER_URL and retry"
        ) from None
    return None


def succeeded(username: str, address: str) -> None:
    """A right password: clear this pair's count (the address count stays)."""
    settings = get_settings()
    pair = _item("login_limit_account_address", settings.login_limit_account_address)
    try:
        _limiter().clear(pair, "pair", username.strip().lower(), address)
    except StorageError:  # the attempt already counted; a stale count only errs on caution
        pass


def message(username: str, refusal: Refusal) -> str:
    """What a refused person reads."""
    if refusal.limit == "address":
        return (
            "too many sign-in attempts from this address; wait "
            f"{refusal.retry_after} s (Retry-After) and try again"
        )
    return (
        f"too many sign-in attempts for '{username}' from this address; wait "
        f"{refusal.retry_after} s (Retry-After) and try again, or sign in from another device"
    )
