"""OpenID Connect ID tokens: validated with joserfc against the provider's JWKS.

Checks (OpenID Connect Core 1.0, 3.1.3.7 and 12.2): the signature, with an algorithm from an
allow-list of asymmetric ones (never ``none``, never HMAC keyed with a public key); ``iss``;
``aud`` (and ``azp`` when there are several audiences); ``exp`` and ``iat`` within a small
clock skew; the sign-in's ``nonce``. A ``kid`` not in the cached JWKS refetches it, at most once
per :data:`JWKS_REFETCH_INTERVAL`, so a key rotation works and a flood of unknown ``kid`` values
costs one request per interval. On refresh (:meth:`IdTokens.vet`, run by the coordinator's
leader before the outcome is published) a new ID token must name the signed-in user: same
``iss``, same ``sub``; otherwise the refresh is a definitive failure for every waiting request.

Nothing here knows about Flask; no JWS or JWK code is hand-written.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

import requests
from joserfc import jws, jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from .config import ConfigKeys as K
from .discovery import Discovery
from .errors import ConfigurationError, IdTokenError, InvalidGrant
from .provider import get_document
from .token import Token

log = logging.getLogger("flask_tokenguard")

#: Seconds of clock difference allowed on ``exp`` and ``iat``.
CLOCK_SKEW = 60.0
#: The least time between two JWKS fetches caused by an unknown ``kid``.
JWKS_REFETCH_INTERVAL = 10.0
#: The longest ID token or JWKS document read.
MAX_ID_TOKEN_CHARS = 16 * 1024
MAX_JWKS_BYTES = 256 * 1024
#: Claims that say nothing about the user and are not kept in the session.
_PROTOCOL_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
#: A claim whose JSON is longer than this is left out of ``guard.user`` (the session stays small).
MAX_CLAIM_CHARS = 1024
#: The event a back-channel logout token carries (OpenID Connect Back-Channel Logout 1.0, 2.4).
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: The oldest logout token accepted (its ``iat``), in seconds.
LOGOUT_TOKEN_MAX_AGE = 300.0


class IdTokens:
    """Validates one client's ID tokens; keeps the provider's JWKS (thread-safe)."""

    def __init__(
        self,
        discovery: Discovery,
        client_id: str,
        *,
        algorithms: Collection[str] = ("RS256", "PS256", "ES256"),
        timeout: float = 10.0,
        skew: float = CLOCK_SKEW,
        refetch_interval: float = JWKS_REFETCH_INTERVAL,
    ) -> None:
        self.discovery = discovery
        self.client_id = client_id
        self.algorithms = tuple(algorithms)
        self.timeout = timeout
        self.skew = skew
        self.refetch_interval = refetch_interval
        self._lock = threading.Lock()
        self._keys: KeySet | None = None
        #: when an unknown ``kid`` last caused a fetch
        self._refetched_at = -float("inf")

    # -- validation ------------------------------------------------------------------------

    def validate(self, id_token: Any, *, nonce: str | None = None) -> dict[str, Any]:
        """The claims of a valid ID token; raises :class:`IdTokenError` (never a token value).

        ``nonce``: the value sent in the authorization request (sign-in); None on refresh.
        """
        if not isinstance(id_token, str) or not id_token or len(id_token) > MAX_ID_TOKEN_CHARS:
            raise IdTokenError("the ID token is missing or malformed")
        decoded = self._decode(id_token)
        claims = dict(decoded.claims)
        self._check_claims(claims, nonce)
        return claims

    def _decode(self, id_token: str) -> jwt.Token:
        keys = self._key_set(refetch=False)
        try:
            try:
                return jwt.decode(id_token, keys, algorithms=self.algorithms)
            except InvalidKeyIdError:
                fresh = self._key_set(refetch=True)
                if fresh is keys:
                    raise
                return jwt.decode(id_token, fresh, algorithms=self.algorithms)
        except InvalidKeyIdError:
            raise IdTokenError(
                "the ID token is signed with a key the provider does not publish"
            ) from None
        except (JoseError, ValueError, TypeError, KeyError, RecursionError) as exc:
            raise IdTokenError(f"the ID token does not verify ({type(exc).__name__})") from None

    def _check_claims(self, claims: Mapping[str, Any], nonce: str | None) -> None:
        issuer = self.discovery.endpoints().issuer
        if not issuer:
            raise ConfigurationError(
                f"the provider's issuer is unknown: set {K.ISSUER} or {K.SERVER_METADATA_URL}"
            )
        if claims.get("iss") != issuer:
            raise IdTokenError("the ID token was issued by another issuer")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise IdTokenError("the ID token names no subject")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else None
        if not audiences or self.client_id not in audiences:
            raise IdTokenError("the ID token is meant for another client")
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.client_id:
            raise IdTokenError("the ID token's authorized party is another client")
        now = time.time()
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        if exp is None or now >= exp + self.skew:
            raise IdTokenError("the ID token has expired")
        if iat is None or iat > now + self.skew:
            raise IdTokenError("the ID token was issued in the future")
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not hmac.compare_digest(
                got.encode("utf-8"), nonce.encode("utf-8")
            ):
                raise IdTokenError("the ID token's nonce is not the sign-in's")

    def validate_logout_token(self, logout_token: Any) -> dict[str, Any]:
        """The claims of a valid back-channel logout token; raises :class:`IdTokenError`.

        OpenID Connect Back-Channel Logout 1.0, 2.6: the signature, ``iss``, ``aud``, ``iat``
        (recent, not in the future), the logout event, a ``sid`` or a ``sub``, a ``jti``, and no
        ``nonce``. Whether the ``jti`` was seen before is the caller's to check.
        """
        if (
            not isinstance(logout_token, str)
            or not logout_token
            or len(logout_token) > MAX_ID_TOKEN_CHARS
        ):
            raise IdTokenError("the logout token is missing or malformed")
        claims = dict(self._decode(logout_token).claims)
        issuer = self.discovery.endpoints().issuer
        if not issuer or claims.get("iss") != issuer:
            raise IdTokenError("the logout token was issued by another issuer")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.client_id not in audiences:
            raise IdTokenError("the logout token is meant for another client")
        now = time.time()
        iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
        if iat is None or iat > now + self.skew or iat < now - LOGOUT_TOKEN_MAX_AGE - self.skew:
            raise IdTokenError("the logout token is not recent")
        if exp is not None and now >= exp + self.skew:
            raise IdTokenError("the logout token has expired")
        events = claims.get("events")
        if not isinstance(events, dict) or not isinstance(
            events.get(BACKCHANNEL_LOGOUT_EVENT), dict
        ):
            raise IdTokenError("the logout token carries no back-channel logout event")
        if "nonce" in claims:
            raise IdTokenError("a logout token never carries a nonce")
        sid, sub = claims.get("sid"), claims.get("sub")
        if not (isinstance(sid, str) and sid) and not (isinstance(sub, str) and sub):
            raise IdTokenError("the logout token names neither a session nor a subject")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise IdTokenError("the logout token has no jti")
        return claims

    # -- the refresh hook ------------------------------------------------------------------

    def vet(self, old: Token, new: Token) -> Token:
        """Check a refresh's new token before it is published; raises :class:`InvalidGrant`.

        A new ID token is validated (no nonce) and must name the same ``iss`` and ``sub`` as
        the signed-in one; a reply without one keeps the previous ID token (for
        ``id_token_hint`` at logout).
        """
        new_id, old_id = new.get("id_token"), old.get("id_token")
        if not new_id:
            if isinstance(old_id, str) and old_id:
                new = {**new, "id_token": old_id}
            return new
        if new_id == old_id:
            return new
        try:
            claims = self.validate(new_id)
        except (IdTokenError, ConfigurationError) as exc:
            log.warning("the refreshed ID token was refused: %s", exc)
            raise InvalidGrant(f"the refreshed ID token is not valid ({exc})") from None
        before = identity(old)
        if before is not None and before != (claims.get("iss"), claims.get("sub")):
            log.warning("a refresh returned an ID token for another user: signing out")
            raise InvalidGrant("the refreshed ID token names another user")
        return new

    def check_adopted(self, old: Token, new: Token) -> None:
        """A result adopted from the shared store must name the same user as ``old``."""
        before, after = identity(old), identity(new)
        if before is not None and after is not None and before != after:
            log.warning("a published refresh result names another user: not adopted")
            raise InvalidGrant("the refreshed token belongs to another user")

    # -- keys ------------------------------------------------------------------------------

    def _key_set(self, *, refetch: bool) -> KeySet:
        keys = self._keys
        if keys is not None and not refetch:
            return keys
        with self._lock:
            if self._keys is not None and (
                self._keys is not keys
                or time.monotonic() - self._refetched_at < self.refetch_interval
            ):
                return self._keys  # fetched meanwhile, or too soon to fetch again
            if self._keys is not None:
                self._refetched_at = time.monotonic()
            try:
                self._keys = self._fetch()
            except IdTokenError:
                if self._keys is None:
                    raise
                log.warning("could not refetch the provider's JWKS; keeping the known keys")
            return self._keys

    def _fetch(self) -> KeySet:
        url = self.discovery.endpoints().jwks_url
        if not url:
            raise ConfigurationError(
                f"the provider's JWKS is unknown: set {K.JWKS_URL} or {K.SERVER_METADATA_URL}"
            )
        try:
            status, body = get_document(url, timeout=self.timeout, max_bytes=MAX_JWKS_BYTES)
        except (requests.RequestException, OSError) as exc:
            raise IdTokenError(
                f"the provider's JWKS could not be fetched ({type(exc).__name__})"
            ) from None
        if status != 200 or len(body) > MAX_JWKS_BYTES:
            raise IdTokenError(f"the provider's JWKS answered {status}")
        try:
            document = json.loads(body)
            keys = [
                k
                for k in document["keys"]
                if isinstance(k, dict) and k.get("kty") in ("RSA", "EC", "OKP")
            ]
            key_set: KeySet = KeySet.import_key_set({"keys": keys})
            return key_set
        except (JoseError, ValueError, TypeError, KeyError, RecursionError) as exc:
            raise IdTokenError(f"the provider's JWKS is malformed ({type(exc).__name__})") from None


def identity(token: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(iss, sub)`` of the ID token a token carries (validated when it entered), or None."""
    id_token = token.get("id_token")
    if not isinstance(id_token, str) or len(id_token) > MAX_ID_TOKEN_CHARS:
        return None
    try:
        claims = json.loads(jws.extract_compact(id_token.encode("ascii")).payload)
    except (JoseError, ValueError, TypeError, RecursionError):
        return None
    if not isinstance(claims, dict):
        return None
    iss, sub = claims.get("iss"), claims.get("sub")
    return (iss, sub) if isinstance(iss, str) and isinstance(sub, str) else None


def user_claims(claims: Mapping[str, Any]) -> dict[str, Any]:
    """What ``guard.user`` keeps: the claims about the user, each small, no protocol values."""
    kept: dict[str, Any] = {}
    for name, value in claims.items():
        if not isinstance(name, str) or name in _PROTOCOL_CLAIMS:
            continue
        try:
            size = len(json.dumps(value))
        except (TypeError, ValueError):
            continue
        if size <= MAX_CLAIM_CHARS:
            kept[name] = value
    return kept


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None
