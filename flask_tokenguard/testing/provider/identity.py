"""OpenID Connect: the signing keys, ID tokens (with their test defects) and logout tokens.

Every signature is made by joserfc (Authlib's own JOSE library); nothing here knows Flask or
HTTP, and nothing here logs a token.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Final

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from joserfc.util import urlsafe_b64decode, urlsafe_b64encode

from .config import BACKCHANNEL_LOGOUT_EVENT, ID_TOKEN_ALG, ID_TOKEN_FAULTS

__all__ = [
    "InvalidHintError",
    "SigningKeys",
    "id_token_claims",
    "logout_token_claims",
]

#: How far in the past the ``expired`` defect puts ``exp``: beyond any sane clock-skew leeway.
EXPIRED_BY: Final = 600
#: The ``aud`` (and ``azp``) the ``wrong_aud`` defect names.
WRONG_AUDIENCE: Final = "another-client"
#: How long a logout token is valid (Back-Channel Logout 1.0 recommends two minutes at most).
LOGOUT_TOKEN_TTL: Final = 120


class InvalidHintError(ValueError):
    """An ``id_token_hint`` that this provider did not sign (or not for this issuer)."""


def _new_key() -> RSAKey:
    return RSAKey.generate_key(  # type: ignore[no-any-return]
        2048, parameters={"use": "sig", "alg": ID_TOKEN_ALG}, private=True, auto_kid=True
    )


class SigningKeys:
    """The provider's RSA keys: one signs, all the published ones are in the JWKS.

    A key made for the ``unknown_kid`` defect signs but is never published.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current = _new_key()
        self._published: list[RSAKey] = [self._current]
        self._unpublished: RSAKey | None = None

    @property
    def kid(self) -> str:
        """The ``kid`` of the key that signs now."""
        with self._lock:
            return str(self._current.kid)

    def kids(self) -> list[str]:
        """The ``kid`` of every published key, the signing one first."""
        with self._lock:
            return [str(key.kid) for key in self._published]

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (RFC 7517) that ``/jwks`` serves."""
        with self._lock:
            published = list(self._published)
        return dict(KeySet(published).as_dict(private=False))  # type: ignore[arg-type]

    def rotate(self, *, keep_old: bool = True) -> str:
        """Sign with a new key from now on; keep the old ones published or drop them."""
        key = _new_key()
        with self._lock:
            self._published = [key, *self._published] if keep_old else [key]
            self._current = key
        return str(key.kid)

    def sign(self, claims: Mapping[str, Any], *, typ: str = "JWT", fault: str | None = None) -> str:
        """A compact JWS over ``claims`` with the signing key, or with a signing defect.

        ``fault`` (one of ``bad_signature``, ``alg_none``, ``unknown_kid``) spoils the
        signature; the claim defects are made by :func:`id_token_claims`.
        """
        if fault == "alg_none":
            return _unsigned(claims, typ)
        with self._lock:
            key = self._current
            if fault == "unknown_kid":
                if self._unpublished is None:
                    self._unpublished = _new_key()
                key = self._unpublished
        header = {"alg": ID_TOKEN_ALG, "typ": typ, "kid": key.kid}
        token = jwt.encode(header, dict(claims), key, algorithms=[ID_TOKEN_ALG])
        if fault == "bad_signature":
            token = _spoil_signature(token)
        return token

    def verify_hint(self, token: str, issuer: str) -> dict[str, Any]:
        """The claims of an ID token this provider signed for ``issuer`` (expired or not).

        For ``id_token_hint``: only the signature (against the published keys) and ``iss``
        are checked. Raises :class:`InvalidHintError`.
        """
        with self._lock:
            keys = KeySet(list(self._published))
        try:
            decoded = jwt.decode(token, keys, algorithms=[ID_TOKEN_ALG])
        except (JoseError, ValueError) as error:
            raise InvalidHintError("id_token_hint is not an ID token from this provider") from error
        claims = dict(decoded.claims)
        if claims.get("iss") != issuer:
            raise InvalidHintError("id_token_hint was issued by another issuer")
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("aud"), str):
            raise InvalidHintError("id_token_hint lacks sub or aud")
        return claims


def id_token_claims(
    *,
    issuer: str,
    client_id: str,
    sub: str,
    sid: str,
    auth_time: float,
    scopes: frozenset[str],
    ttl: int,
    name: str,
    email: str,
    nonce: str | None = None,
    fault: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of an ID token, with the claim defect ``fault`` (see :data:`ID_TOKEN_FAULTS`)."""
    if fault is not None and fault not in ID_TOKEN_FAULTS:
        raise ValueError(f"unknown id_token_fault {fault!r}")
    iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": client_id,
        "azp": client_id,
        "exp": iat + ttl,
        "iat": iat,
        "auth_time": int(auth_time),
        "sid": sid,
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if "profile" in scopes:
        claims["name"] = name
    if "email" in scopes:
        claims["email"] = email
    if fault == "wrong_sub":
        claims["sub"] = f"{sub}-impostor"
    elif fault == "wrong_iss":
        claims["iss"] = f"{issuer}/impostor"
    elif fault == "wrong_aud":
        claims["aud"] = claims["azp"] = WRONG_AUDIENCE
    elif fault == "wrong_nonce":
        claims["nonce"] = f"{nonce or ''}-forged-{secrets.token_hex(4)}"
    elif fault == "expired":
        claims["iat"] = iat - EXPIRED_BY - ttl
        claims["exp"] = iat - EXPIRED_BY
    return claims


def logout_token_claims(
    *, issuer: str, client_id: str, sub: str, sid: str, now: float | None = None
) -> dict[str, Any]:
    """A Back-Channel Logout 1.0 logout token's claims: never a ``nonce``."""
    iat = int(time.time() if now is None else now)
    return {
        "iss": issuer,
        "aud": client_id,
        "iat": iat,
        "exp": iat + LOGOUT_TOKEN_TTL,
        "jti": uuid.uuid4().hex,
        "sub": sub,
        "sid": sid,
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
    }


def _b64_json(value: Mapping[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return urlsafe_b64encode(raw).decode("ascii")


def _unsigned(claims: Mapping[str, Any], typ: str) -> str:
    """An ``alg: none`` JWT (RFC 7519 section 6): no signature at all, on purpose.

    joserfc can make one too, but warns (``SecurityWarning``) while doing so, which the test
    suite turns into an error in whichever thread is running.
    """
    return f"{_b64_json({'alg': 'none', 'typ': typ})}.{_b64_json(claims)}."


def _spoil_signature(token: str) -> str:
    """The same token with one bit of its signature flipped: well-formed, not valid."""
    head, payload, signature = token.split(".")
    raw = bytearray(urlsafe_b64decode(signature.encode("ascii")))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{urlsafe_b64encode(bytes(raw)).decode('ascii')}"
