"""The token value: validating a provider's reply or a session's content, expiry arithmetic.

A token is a plain ``dict`` as the token endpoint returns it (``access_token``,
``refresh_token``, ``token_type``, ``expires_at``, ...). ``expires_at`` is wall-clock epoch
seconds because that is what providers speak and what survives between processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from enum import Enum
from typing import Any

from .errors import TokenError

Token = dict[str, Any]


class TokenState(str, Enum):
    """What the session knows about its refresh token, readable without opening it."""

    #: usable: refresh when due
    OK = "ok"
    #: a refresh's outcome is unknown and the provider may have rotated the refresh token:
    #: never present it again; the access token serves until it expires
    AMBIGUOUS = "ambiguous"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def accept(
    reply: Mapping[str, Any] | Any,
    *,
    received_at: float | None = None,
    previous_refresh_token: str | None = None,
) -> Token:
    """Check a token as it enters (a sign-in, ``guard.login``, a refresh) and return a clean copy.

    Every way in goes through here, so every stored token has an absolute ``expires_at``
    whenever the provider gave an expiry. ``received_at`` is when the request that brought it
    was sent (epoch seconds): then ``expires_at`` is ``received_at + expires_in``, never later
    than the provider's own clock (oauthlib rounds the time it adds). Without it, an
    ``expires_at`` already present wins and ``expires_in`` counts from now. A reply without a
    refresh token keeps ``previous_refresh_token`` (providers that do not rotate).

    Raises :class:`TokenError` (never echoing values) when it is not a usable token.
    """
    token = _check(reply)
    refresh = token.get("refresh_token")
    if (refresh is None or refresh == "") and previous_refresh_token:
        token["refresh_token"] = previous_refresh_token
    expires_in = _number(token.get("expires_in"))
    if expires_in is not None and (received_at is not None or "expires_at" not in token):
        token["expires_at"] = (time.time() if received_at is None else received_at) + expires_in
    return token


def restore(data: Mapping[str, Any] | Any) -> Token:
    """Check a token read back from the session or the store; its expiry is never recomputed."""
    return _check(data)


def _check(reply: Mapping[str, Any] | Any) -> Token:
    if not isinstance(reply, Mapping):
        raise TokenError(f"token is a {type(reply).__name__}, not an object")
    access = reply.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenError("token has no access_token")
    token: Token = {k: v for k, v in reply.items() if isinstance(k, str)}
    refresh = token.get("refresh_token")
    if refresh is None or refresh == "":
        token.pop("refresh_token", None)
    elif not isinstance(refresh, str):
        raise TokenError("token's refresh_token is not a string")
    token_type = token.get("token_type", "Bearer")
    if not isinstance(token_type, str):
        raise TokenError("token's token_type is not a string")
    token["token_type"] = token_type
    for key in ("expires_at", "expires_in"):
        if token.get(key) is None:
            token.pop(key, None)
            continue
        number = _number(token[key])
        if number is None:
            raise TokenError(f"token's {key} is not a number")
        token[key] = number
    return token


def lifetime(token: Mapping[str, Any], now: float | None = None) -> float | None:
    """Seconds the access token was given to live: ``expires_in``, else what is left now."""
    expires_in = _number(token.get("expires_in"))
    if expires_in is not None:
        return expires_in
    exp = expires_at(token)
    return None if exp is None else exp - (time.time() if now is None else now)


def expires_at(token: Mapping[str, Any]) -> float | None:
    """Epoch seconds at which the access token expires, or None when the provider gave no expiry."""
    return _number(token.get("expires_at"))


#: A token is refreshed no earlier than this fraction of its lifetime, whatever the leeway:
#: a leeway longer than the token lives must not refresh on every request.
MIN_LIFETIME_FRACTION = 0.5


def refresh_at(token: Mapping[str, Any], leeway: float, now: float | None = None) -> float | None:
    """When to refresh: the later of ``expires_at - leeway`` and half the token's lifetime."""
    exp = expires_at(token)
    if exp is None:
        return None
    life = lifetime(token, now)
    if life is not None and life > 0:
        leeway = min(leeway, life * (1 - MIN_LIFETIME_FRACTION))
    return exp - leeway


def is_due(due: float | None, now: float | None = None) -> bool:
    """True when a token whose refresh time is ``due`` should be refreshed now."""
    if due is None:
        return False
    return (time.time() if now is None else now) >= due


def is_expired(exp: float | None, now: float | None = None) -> bool:
    if exp is None:
        return False
    return (time.time() if now is None else now) >= exp
