"""Every ``TOKENGUARD_*`` configuration key: its name, its default and its check.

``init_app`` fills the defaults with ``app.config.setdefault`` and builds a frozen
:class:`Settings` from the app's config, so a bad value is reported at start-up with the
key's name rather than at the first refresh. Values may come from
``app.config.from_prefixed_env()``, which parses JSON: string keys are coerced back.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError


class ConfigKeys:
    """The public configuration key names."""

    CLIENT_ID = "TOKENGUARD_CLIENT_ID"
    CLIENT_SECRET = "TOKENGUARD_CLIENT_SECRET"  # noqa: S105 - a key name, not a secret
    CLIENT_AUTH = "TOKENGUARD_CLIENT_AUTH"
    AUTHORIZE_URL = "TOKENGUARD_AUTHORIZE_URL"
    TOKEN_URL = "TOKENGUARD_TOKEN_URL"  # noqa: S105
    SCOPE = "TOKENGUARD_SCOPE"
    SESSION_KEY = "TOKENGUARD_SESSION_KEY"
    LEEWAY = "TOKENGUARD_LEEWAY"
    PROVIDER_TIMEOUT = "TOKENGUARD_PROVIDER_TIMEOUT"
    CLAIM_TTL = "TOKENGUARD_CLAIM_TTL"
    RESTART_HOLD = "TOKENGUARD_RESTART_HOLD"
    WAIT_TIMEOUT = "TOKENGUARD_WAIT_TIMEOUT"
    RESULT_TTL = "TOKENGUARD_RESULT_TTL"
    FAILURE_TTL = "TOKENGUARD_FAILURE_TTL"
    RETRY_AFTER = "TOKENGUARD_RETRY_AFTER"
    PROVIDER_GRACE = "TOKENGUARD_PROVIDER_GRACE"
    CACHE_URL = "TOKENGUARD_CACHE_URL"
    KEY_PREFIX = "TOKENGUARD_KEY_PREFIX"
    STORE_FALLBACK = "TOKENGUARD_STORE_FALLBACK"
    EXEMPT = "TOKENGUARD_EXEMPT"
    AUTO_REFRESH = "TOKENGUARD_AUTO_REFRESH"
    LOGIN_VIEW = "TOKENGUARD_LOGIN_VIEW"
    SECRET = "TOKENGUARD_SECRET"  # noqa: S105
    SECRET_FALLBACKS = "TOKENGUARD_SECRET_FALLBACKS"  # noqa: S105
    ALLOW_INSECURE_LOOPBACK = "TOKENGUARD_ALLOW_INSECURE_LOOPBACK"
    TOKEN_STORAGE = "TOKENGUARD_TOKEN_STORAGE"  # noqa: S105
    SERVER_METADATA_URL = "TOKENGUARD_SERVER_METADATA_URL"
    METADATA_TTL = "TOKENGUARD_METADATA_TTL"
    ISSUER = "TOKENGUARD_ISSUER"
    USERINFO_URL = "TOKENGUARD_USERINFO_URL"
    REVOCATION_URL = "TOKENGUARD_REVOCATION_URL"
    END_SESSION_URL = "TOKENGUARD_END_SESSION_URL"
    JWKS_URL = "TOKENGUARD_JWKS_URL"
    ID_TOKEN_ALGORITHMS = "TOKENGUARD_ID_TOKEN_ALGORITHMS"  # noqa: S105
    AUTHORIZE_PARAMS = "TOKENGUARD_AUTHORIZE_PARAMS"
    FETCH_USERINFO = "TOKENGUARD_FETCH_USERINFO"
    GRANT_STORE_URL = "TOKENGUARD_GRANT_STORE_URL"
    OFFLINE_GRANTS = "TOKENGUARD_OFFLINE_GRANTS"


K = ConfigKeys

#: Defaults, applied with ``app.config.setdefault``; documented in the README's table.
DEFAULTS: Mapping[str, Any] = {
    K.CLIENT_ID: None,
    K.CLIENT_SECRET: None,
    K.CLIENT_AUTH: "client_secret_basic",
    K.AUTHORIZE_URL: None,
    K.TOKEN_URL: None,
    K.SCOPE: None,
    K.SESSION_KEY: "_tokenguard",
    K.LEEWAY: 60.0,
    K.PROVIDER_TIMEOUT: 10.0,
    K.CLAIM_TTL: 15.0,
    K.RESTART_HOLD: 2.0,
    K.WAIT_TIMEOUT: 30.0,
    K.RESULT_TTL: 3600.0,
    K.FAILURE_TTL: 10.0,
    K.RETRY_AFTER: 5.0,
    K.PROVIDER_GRACE: 0.0,
    K.CACHE_URL: None,
    K.KEY_PREFIX: "tokenguard",
    K.STORE_FALLBACK: "closed",
    K.EXEMPT: (),
    K.AUTO_REFRESH: True,
    K.LOGIN_VIEW: None,
    K.SECRET: None,
    K.SECRET_FALLBACKS: (),
    K.ALLOW_INSECURE_LOOPBACK: False,
    K.TOKEN_STORAGE: "store",
    K.SERVER_METADATA_URL: None,
    K.METADATA_TTL: 3600.0,
    K.ISSUER: None,
    K.USERINFO_URL: None,
    K.REVOCATION_URL: None,
    K.END_SESSION_URL: None,
    K.JWKS_URL: None,
    K.ID_TOKEN_ALGORITHMS: ("RS256", "PS256", "ES256"),
    K.AUTHORIZE_PARAMS: None,
    K.FETCH_USERINFO: False,
    K.GRANT_STORE_URL: None,
    K.OFFLINE_GRANTS: False,
}

CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post", "none")
STORE_FALLBACKS = ("closed", "process")
TOKEN_STORAGES = ("store", "session")
#: Transient outcomes are remembered for their Retry-After, but never longer than this.
TRANSIENT_TTL_CAP = 5.0
#: The shortest TOKENGUARD_RESTART_HOLD: leaders re-assert their claims within it.
MIN_RESTART_HOLD = 0.5
#: Hosts to which plain http:// is allowed with TOKENGUARD_ALLOW_INSECURE_LOOPBACK.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
#: ID token signature algorithms that may be allowed: asymmetric only (never ``none``, never
#: HMAC, whose "key" would be the public JWKS).
ID_TOKEN_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: Authorization-request parameters the login flow sets itself: TOKENGUARD_AUTHORIZE_PARAMS may
#: not replace them.
RESERVED_AUTHORIZE_PARAMS = frozenset(
    {
        "response_type",
        "client_id",
        "redirect_uri",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    }
)
#: Secrets shorter than this (in bytes) are logged as weak.
MIN_SECRET_BYTES = 32

log = logging.getLogger("flask_tokenguard")


@dataclass(frozen=True)
class Settings:
    """The checked configuration of one app."""

    client_id: str
    client_secret: str | None = field(repr=False)
    client_auth: str
    authorize_url: str | None
    token_url: str | None
    scope: tuple[str, ...] | None
    session_key: str
    leeway: float
    provider_timeout: float
    claim_ttl: float
    wait_timeout: float
    result_ttl: float
    failure_ttl: float
    retry_after: float
    provider_grace: float
    cache_url: str | None
    key_prefix: str
    store_fallback: str
    exempt: frozenset[str]
    auto_refresh: bool
    login_view: str | None
    secret: str | bytes | None = field(repr=False)
    secret_fallbacks: tuple[str | bytes, ...] = field(repr=False)
    allow_insecure_loopback: bool = False
    token_storage: str = "store"  # noqa: S105 - a storage mode, not a secret
    server_metadata_url: str | None = None
    metadata_ttl: float = DEFAULTS[K.METADATA_TTL]
    issuer: str | None = None
    userinfo_url: str | None = None
    revocation_url: str | None = None
    end_session_url: str | None = None
    jwks_url: str | None = None
    id_token_algorithms: tuple[str, ...] = DEFAULTS[K.ID_TOKEN_ALGORITHMS]
    authorize_params: tuple[tuple[str, str], ...] = ()
    fetch_userinfo: bool = False
    #: an SQLAlchemy URL, an Engine, or a callable returning one (may hold a password)
    grant_store_url: Any = field(default=None, repr=False)
    offline_grants: bool = False
    restart_hold: float = DEFAULTS[K.RESTART_HOLD]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        client_id = _string(config, K.CLIENT_ID, required=True)
        grant_store_url = _grant_store(config)
        offline_grants = _bool(config, K.OFFLINE_GRANTS)
        if offline_grants and grant_store_url is None:
            raise ConfigurationError(
                f"{K.OFFLINE_GRANTS} needs {K.GRANT_STORE_URL}: the grants are kept in a"
                " database (postgresql://... or sqlite:///...)"
            )
        if offline_grants and config.get(K.TOKEN_STORAGE, "store") != "store":
            raise ConfigurationError(
                f"{K.OFFLINE_GRANTS} needs {K.TOKEN_STORAGE} = 'store': a job and the"
                " browser share the grant's record in the shared store"
            )
        loopback = _bool(config, K.ALLOW_INSECURE_LOOPBACK)
        metadata_url = _url(config, K.SERVER_METADATA_URL, loopback=loopback)
        # With discovery, the token endpoint may come from the provider's metadata.
        token_url = _url(config, K.TOKEN_URL, required=metadata_url is None, loopback=loopback)
        client_auth = _choice(config, K.CLIENT_AUTH, CLIENT_AUTH_METHODS)
        client_secret = _string(config, K.CLIENT_SECRET)
        if client_auth != "none" and not client_secret:
            raise ConfigurationError(
                f"{K.CLIENT_SECRET} is required when {K.CLIENT_AUTH} is {client_auth!r}"
                " (use 'none' for a public client)"
            )
        provider_timeout = _seconds(config, K.PROVIDER_TIMEOUT, positive=True)
        claim_ttl = _seconds(config, K.CLAIM_TTL, positive=True)
        wait_timeout = _seconds(config, K.WAIT_TIMEOUT, positive=True)
        if claim_ttl <= provider_timeout:
            raise ConfigurationError(
                f"{K.CLAIM_TTL} ({claim_ttl:g}) must be longer than {K.PROVIDER_TIMEOUT}"
                f" ({provider_timeout:g}): a claim must outlive the call it protects"
            )
        if wait_timeout < claim_ttl + provider_timeout:
            raise ConfigurationError(
                f"{K.WAIT_TIMEOUT} ({wait_timeout:g}) must be at least {K.CLAIM_TTL} +"
                f" {K.PROVIDER_TIMEOUT} ({claim_ttl + provider_timeout:g}), so a takeover of a"
                " dead leader's claim finishes in time"
            )
        restart_hold = _seconds(config, K.RESTART_HOLD, positive=True)
        if restart_hold < MIN_RESTART_HOLD:
            raise ConfigurationError(
                f"{K.RESTART_HOLD} ({restart_hold:g}) must be at least {MIN_RESTART_HOLD:g}:"
                " leaders need that long to re-assert their claims on a restarted store"
            )
        restart_hold = min(restart_hold, claim_ttl)  # a claim TTL was the old, longest hold
        result_ttl = _seconds(config, K.RESULT_TTL, positive=True)
        if result_ttl < wait_timeout:
            raise ConfigurationError(
                f"{K.RESULT_TTL} ({result_ttl:g}) must be at least {K.WAIT_TIMEOUT}"
                f" ({wait_timeout:g}): late requests must still find the result"
            )
        session_key = _string(config, K.SESSION_KEY, required=True)
        key_prefix = _string(config, K.KEY_PREFIX, required=True)
        secret = check_secret(config.get(K.SECRET), K.SECRET)
        fallbacks = _sequence(config, K.SECRET_FALLBACKS)
        for item in fallbacks:
            if not isinstance(item, (str, bytes)):
                raise ConfigurationError(f"{K.SECRET_FALLBACKS} must hold strings or bytes")
        exempt = _sequence(config, K.EXEMPT)
        if not all(isinstance(e, str) for e in exempt):
            raise ConfigurationError(f"{K.EXEMPT} must be a list of endpoint or blueprint names")
        return cls(
            client_id=client_id,
            client_secret=client_secret,
            client_auth=client_auth,
            authorize_url=_url(config, K.AUTHORIZE_URL, loopback=loopback),
            token_url=token_url,
            scope=_scope(config),
            session_key=session_key,
            leeway=_seconds(config, K.LEEWAY),
            provider_timeout=provider_timeout,
            claim_ttl=claim_ttl,
            restart_hold=restart_hold,
            wait_timeout=wait_timeout,
            result_ttl=result_ttl,
            failure_ttl=_seconds(config, K.FAILURE_TTL, positive=True),
            retry_after=_seconds(config, K.RETRY_AFTER, positive=True),
            provider_grace=_seconds(config, K.PROVIDER_GRACE),
            cache_url=_string(config, K.CACHE_URL),
            key_prefix=key_prefix,
            store_fallback=_choice(config, K.STORE_FALLBACK, STORE_FALLBACKS),
            exempt=frozenset(str(e) for e in exempt),
            auto_refresh=_bool(config, K.AUTO_REFRESH),
            login_view=_string(config, K.LOGIN_VIEW),
            secret=secret,
            secret_fallbacks=tuple(fallbacks),
            allow_insecure_loopback=loopback,
            token_storage=_choice(config, K.TOKEN_STORAGE, TOKEN_STORAGES),
            server_metadata_url=metadata_url,
            metadata_ttl=_seconds(config, K.METADATA_TTL, positive=True),
            issuer=_string(config, K.ISSUER),
            userinfo_url=_url(config, K.USERINFO_URL, loopback=loopback),
            revocation_url=_url(config, K.REVOCATION_URL, loopback=loopback),
            end_session_url=_url(config, K.END_SESSION_URL, loopback=loopback),
            jwks_url=_url(config, K.JWKS_URL, loopback=loopback),
            id_token_algorithms=_algorithms(config),
            authorize_params=_authorize_params(config),
            fetch_userinfo=_bool(config, K.FETCH_USERINFO),
            grant_store_url=grant_store_url,
            offline_grants=offline_grants,
        )


def unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """A line for every ``TOKENGUARD_*`` key this version does not know, with the nearest one."""
    known = list(DEFAULTS)
    lines = []
    for key in sorted(k for k in config if isinstance(k, str) and k.startswith("TOKENGUARD_")):
        if key in DEFAULTS:
            continue
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
        hint = f"; did you mean {near[0]}?" if near else ""
        lines.append(f"unknown configuration key {key} (ignored){hint}")
    return lines


def check_secret(value: Any, key: str) -> str | bytes | None:
    """A sealing secret as given; a non-string is an error, a short one is logged as weak."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)):
        raise ConfigurationError(f"{key} must be a string or bytes, not {type(value).__name__}")
    size = len(value.encode("utf-8") if isinstance(value, str) else value)
    if size < MIN_SECRET_BYTES:
        log.warning(
            "%s is %d bytes long: tokens are sealed with it; use at least %d random bytes"
            " (python -c 'import secrets; print(secrets.token_hex(32))')",
            key,
            size,
            MIN_SECRET_BYTES,
        )
    return value


def _string(config: Mapping[str, Any], key: str, *, required: bool = False) -> Any:
    value = config.get(key)
    if value is None or value == "":
        if required:
            raise ConfigurationError(f"{key} is required")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigurationError(f"{key} must be a string, not {type(value).__name__}")
    # from_prefixed_env() parses JSON: FLASK_TOKENGUARD_CLIENT_ID=12345 arrives as an int.
    return str(value)


def _url(
    config: Mapping[str, Any], key: str, *, required: bool = False, loopback: bool = False
) -> Any:
    value = _string(config, key, required=required)
    if value is None:
        return None
    return check_url(value, key, loopback=loopback)


def check_url(value: str, key: str, *, loopback: bool = False) -> str:
    """``value`` if it is an https:// URL (http:// only to loopback, with the opt-in key).

    Also applied to the endpoints discovered from ``TOKENGUARD_SERVER_METADATA_URL``; ``key``
    names where the URL came from.
    """
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise ConfigurationError(f"{key} is not a valid URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise ConfigurationError(f"{key} must be an https:// URL")
    if parts.scheme == "http":
        if host not in LOOPBACK_HOSTS:
            raise ConfigurationError(
                f"{key} is plain http:// to {host}: tokens and the client secret would cross"
                " the network in clear; use https://"
            )
        if not loopback:
            raise ConfigurationError(
                f"{key} is plain http:// to {host}: for local development set"
                f" {K.ALLOW_INSECURE_LOOPBACK} = True (http is then accepted for 127.0.0.1,"
                " ::1 and localhost only); otherwise use https://"
            )
    return value


def _seconds(config: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    value = config.get(key)
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigurationError(f"{key} must be a number of seconds") from None
    if number != number or number < 0 or (positive and number == 0):
        raise ConfigurationError(
            f"{key} must be {'greater than 0' if positive else 'zero or more'} seconds"
        )
    return number


def _bool(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in (
        "1",
        "true",
        "yes",
        "on",
        "0",
        "false",
        "no",
        "off",
    ):
        return value.lower() in ("1", "true", "yes", "on")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigurationError(f"{key} must be true or false")


def _choice(config: Mapping[str, Any], key: str, choices: Iterable[str]) -> str:
    value = config.get(key)
    options = tuple(choices)
    if value not in options:
        raise ConfigurationError(f"{key} must be one of {', '.join(options)}; got {value!r}")
    return str(value)


def _sequence(config: Mapping[str, Any], key: str) -> tuple[Any, ...]:
    value = config.get(key)
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        return (value,)
    if isinstance(value, Iterable):
        return tuple(value)
    raise ConfigurationError(f"{key} must be a list")


def _grant_store(config: Mapping[str, Any]) -> Any:
    """A URL (``scheme://...``), an SQLAlchemy Engine, or a callable returning one; or None."""
    value = config.get(K.GRANT_STORE_URL)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        if "://" not in value:
            raise ConfigurationError(
                f"{K.GRANT_STORE_URL} must be an SQLAlchemy URL such as"
                " postgresql://user@host/db or sqlite:////abs/path.db"
            )
        return value
    if callable(value) or hasattr(value, "dialect"):
        return value
    raise ConfigurationError(
        f"{K.GRANT_STORE_URL} must be a URL, an SQLAlchemy Engine or a callable returning one,"
        f" not {type(value).__name__}"
    )


def _scope(config: Mapping[str, Any]) -> tuple[str, ...] | None:
    value = config.get(K.SCOPE)
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, Iterable) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ConfigurationError(f"{K.SCOPE} must be a string or a list of strings")


def _algorithms(config: Mapping[str, Any]) -> tuple[str, ...]:
    value = _sequence(config, K.ID_TOKEN_ALGORITHMS)
    if not value or not all(isinstance(a, str) and a in ID_TOKEN_ALGORITHMS for a in value):
        raise ConfigurationError(
            f"{K.ID_TOKEN_ALGORITHMS} must list asymmetric JWS algorithms among"
            f" {', '.join(sorted(ID_TOKEN_ALGORITHMS))} (never none, never HMAC)"
        )
    return tuple(value)


def _authorize_params(config: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    value = config.get(K.AUTHORIZE_PARAMS)
    if value is None or value == "":
        return ()
    if not isinstance(value, Mapping):
        raise ConfigurationError(
            f"{K.AUTHORIZE_PARAMS} must be a dict of parameter names to values,"
            ' e.g. {"prompt": "consent"}'
        )
    params = []
    for name, item in value.items():
        if not isinstance(name, str) or name in RESERVED_AUTHORIZE_PARAMS:
            raise ConfigurationError(
                f"{K.AUTHORIZE_PARAMS} may not set {name!r}: the login flow sets it"
            )
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise ConfigurationError(f"{K.AUTHORIZE_PARAMS}[{name!r}] must be a string")
        params.append((name, str(item)))
    return tuple(params)
