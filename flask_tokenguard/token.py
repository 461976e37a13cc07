"""The token value: validating a provider's reply or a session's content, expiry arithmetic.

A token is a plain ``dict`` as requests-oauthlib returns it (``access_token``,
``refresh_token``, ``token_type``, ``expires_at``, ...). ``expires_at`` is wall-clock epoch
seconds because that is what providers speak and what survives between processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from .errors import TokenError

Token = dict[str, Any]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def normalize(
    reply: Mapping[str, Any] | Any,
    *,
    previous_refresh_token: str | None = None,
    now: float | None = None,
    received: bool = False,
) -> Token:
    """Check that ``reply`` is a usable token and return a clean copy.

    Raises :class:`TokenError` (never echoing values) when it is not. A reply without a
    refresh token keeps ``previous_refresh_token`` (providers that do not rotate); a missing
    ``expires_at`` is computed from ``expires_in``. For a reply just ``received`` from the
    provider, ``expires_at`` is always ``now + expires_in`` with ``now`` the time the request
    was sent: never later than the provider's own clock (oauthlib rounds the time it adds).
    """
    if not isinstance(reply, Mapping):
        raise TokenError(f"token is a {type(reply).__name__}, not an object")
    access = reply.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenError("token has no access_token")
    token: Token = {k: v for k, v in reply.items() if isinstance(k, str)}
    refresh = token.get("refresh_token")
    if refresh is None or refresh == "":
        if previous_refresh_token:
            token["refresh_token"] = previous_refresh_token
        else:
            token.pop("refresh_token", None)
    elif not isinstance(refresh, str):
        raise TokenError("token's refresh_token is not a string")
    token_type = token.get("token_type", "Bearer")
    if not isinstance(token_type, str):
        raise TokenError("token's token_type is not a string")
    token["token_type"] = token_type
    current = time.time() if now is None else now
    expires_at = _number(token.get("expires_at"))
    expires_in = _number(token.get("expires_in"))
    if "expires_at" in token and expires_at is None:
        raise TokenError("token's expires_at is not a number")
    if "expires_in" in token and token["expires_in"] is not None and expires_in is None:
        raise TokenError("token's expires_in is not a number")
    if expires_in is not None and (expires_at is None or received):
        expires_at = current + expires_in
    if expires_at is not None:
        token["expires_at"] = expires_at
    if expires_in is not None:
        token["expires_in"] = expires_in
    return token


def expires_at(token: Mapping[str, Any]) -> float | None:
    """Epoch seconds at which the access token expires, or None when the provider gave no expiry."""
    return _number(token.get("expires_at"))


def is_due(exp: float | None, leeway: float, now: float | None = None) -> bool:
    """True when an access token expiring at ``exp`` should be refreshed now."""
    if exp is None:
        return False
    return (time.time() if now is None else now) >= exp - leeway


def is_expired(exp: float | None, now: float | None = None) -> bool:
    if exp is None:
        return False
    return (time.time() if now is None else now) >= exp
