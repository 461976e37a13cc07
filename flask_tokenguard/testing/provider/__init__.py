"""A strict OAuth 2.0 authorization server for demos and tests (needs the ``demo`` extra: Authlib).

Why it exists: flask-tokenguard must be correct against the strictest provider there is, so this
one behaves like Auth0/Okta/Hydra with every knob at its strictest. Refresh tokens rotate on every
use, a used refresh token presented again revokes the whole token family (reuse window 0 s by
default), and it counts every presentation of every refresh token so that tests can assert the
invariant the extension exists for: no refresh token is ever presented twice
(``stats()["max_presentations"] == 1``).

Endpoints (all on one Flask app, see :func:`create_provider_app`):

``GET /authorize``
    Authorization code grant with PKCE ``S256`` required and ``state`` passed through. It
    auto-approves as a demo user (``login_hint`` or ``user`` query parameter, default ``alice``),
    so a browser or an HTTP client following the redirect logs in without a form. Any
    ``http://127.0.0.1:*/...`` or ``http://localhost:*/...`` redirect URI is accepted.
``POST /token``
    ``authorization_code`` and ``refresh_token`` grants. Client authentication:
    ``client_secret_basic``, ``client_secret_post`` (confidential ``demo-client`` /
    ``demo-secret``) and ``none`` (public ``demo-public``). Every reply carries ``expires_in``.
``GET /userinfo``
    Bearer-protected: ``{"sub", "name", "token_fingerprint"}`` (:func:`fingerprint` of the access
    token: 8 hex digits of a SHA-256); 401 for a missing, unknown, expired or revoked token.
``GET /.well-known/oauth-authorization-server``
    RFC 8414 metadata, so clients can discover the endpoints.

Admin API, for tests that drive the provider from other processes. It has no credentials; it
answers only requests whose peer address is loopback (403 for any other), whatever address the
server listens on, and its POSTs need a JSON body (415 otherwise); a web page cannot send one
without a CORS preflight. :class:`flask_tokenguard.testing.ProviderHandle` drives it over HTTP:

``GET /_admin/stats``
    The counters: ``refresh_requests``, ``presentations`` (per refresh token fingerprint),
    ``max_presentations``, ``consume_attempts``/``max_consume_attempts`` (presentations that
    reached the check-and-consume, i.e. were not turned away by a fault first), ``refreshes``
    (committed rotations), ``reuse_detected``, ``grace_reuses``, ``families_revoked``,
    ``invalid_grants``, ``code_exchanges``, ``admin_issued``, ``faults_fired``, the pending
    ``faults`` and the current ``settings``.
``GET /_admin/issued``
    ``{"access_tokens": [...], "refresh_tokens": [...]}``: every token value issued since the last
    reset, so tests can scan stores and logs for them.
``GET|POST /_admin/faults``
    Read or set faults and settings; the JSON body takes the keyword arguments of
    :meth:`ProviderState.set_faults`.
``POST /_admin/reset``
    Clear counters, faults and the issued list and restore the configured settings; with
    ``{"drop_tokens": true}`` also forget every token and code.
``POST /_admin/issue``
    ``{"sub": "alice", "expires_in": 0, "client_id": "demo-client", "scope": ""}`` mints a token
    pair for a user without the browser flow (e.g. an already expired access token).
``POST /_admin/revoke``
    ``{"token": "<access or refresh token>"}`` revokes that token's family, like a provider-side
    logout.

Faults (:data:`FAULTS`) apply to refresh-grant requests only. Each takes a count: ``n > 0`` for
the next ``n`` requests it applies to, ``True`` or ``-1`` until cleared, ``0``/``False``/``None``
to clear it. ``unavailable_before``, ``invalid_client`` and ``status`` (unless
``status_after_consume``) answer before the refresh token is looked at; the others act only on a
refresh that was committed (token rotated, new tokens stored).

Safe by default: the server listens on loopback only unless told otherwise in so many words
(``--unsafe-expose-demo-provider``, ``ProviderServer(unsafe_expose=True)``), and the app answers
only to the host names it serves (``TRUSTED_HOSTS``), so a DNS rebinding page gets 400.

Run it on its own with ``python -m flask_tokenguard.demo_provider --port 5001``, in a test with
:class:`ProviderServer`, or under any WSGI server from ONE process (threads are fine: the state
lives in that process's memory, so several workers would each keep their own). Token values are
never logged, not even at DEBUG (Authlib's own "Issue token" lines are filtered out); log lines
carry fingerprints at most.

The modules, one concern each: ``config`` (settings, fault names, fingerprints), ``models``
(clients, tokens, families), ``state`` (storage, counters, faults, under one lock), ``grants``
(Authlib glue), ``app`` (routes and the admin API), ``server`` (the threaded server), ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_provider_app, get_provider_state
    from .cli import main
    from .config import FAULTS, ProviderConfig, fingerprint
    from .server import ProviderServer, UnsafeHostError
    from .state import ProviderState

_WHERE = {
    "create_provider_app": ".app",
    "get_provider_state": ".app",
    "main": ".cli",
    "FAULTS": ".config",
    "ProviderConfig": ".config",
    "fingerprint": ".config",
    "ProviderServer": ".server",
    "UnsafeHostError": ".server",
    "ProviderState": ".state",
}

__all__ = [
    "FAULTS",
    "ProviderConfig",
    "ProviderServer",
    "ProviderState",
    "UnsafeHostError",
    "create_provider_app",
    "fingerprint",
    "get_provider_state",
    "main",
]


def __getattr__(name: str) -> Any:
    """Load a name on first use; the server parts say which extra they need."""
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _WHERE[name] != ".config":
        try:
            import authlib  # noqa: F401 (only: is the demo extra installed?)
        except ImportError as error:
            raise ImportError(
                "the demo provider needs Authlib, from the demo extra: "
                'pip install "flask-tokenguard[demo]"'
            ) from error
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
