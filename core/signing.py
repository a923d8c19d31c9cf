"""Webhook secrets and signatures, shared by the API (which shows a new webhook's secret once)
and the worker (which signs every delivery).

A webhook's secret is derived from DS_SECRET_KEY and the webhook's salt; only the salt is stored,
so a leaked database reveals no secret (like API tokens), and the worker that signs deliveries
derives it again. Rotating DS_SECRET_KEY changes every secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from core.settings import get_settings

WEBHOOK_SECRET_PREFIX = "whsec_"


def webhook_secret(salt: str) -> str:
    """The signing secret of a webhook: derived from DS_SECRET_KEY and the webhook's salt."""
    key = get_settings().secret_key.encode()
    digest = hmac.new(key, f"webhook:{salt}".encode(), hashlib.sha256).digest()
    return WEBHOOK_SECRET_PREFIX + base64.urlsafe_b64encode(digest).decode().rstrip("=")


def new_webhook_salt() -> str:
    """A fresh random salt for a new webhook's secret."""
    return secrets.token_hex(16)


def sign_payload(secret: str, body: bytes) -> str:
    """The `X-Distill-Signature` header value: `sha256=<hex HMAC-SHA256(secret, raw body)>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
