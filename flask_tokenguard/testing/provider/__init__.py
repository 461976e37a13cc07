"""A strict OAuth 2.0 authorization server and OpenID Provider for demos and tests (``demo`` extra).

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
    ``http://127.0.0.1:*/...`` or ``http://localhost:*/...`` redirect URI is accepted. Every
    redirect back, errors included, carries ``iss`` (RFC 9207); ``nonce`` is kept for the ID token.
``POST /token``
    ``authorization_code``, ``refresh_token`` and ``client_credentials`` (confidential client
    only; no refresh token) grants. Client authentication: ``client_secret_basic``,
    ``client_secret_post`` (confidential ``demo-client`` / ``demo-secret``) and ``none`` (public
    ``demo-public``). Every reply carries ``expires_in``. A sign-in with scope ``openid`` gets an
    ``id_token``, and so does every refresh of its family (same ``sub`` and ``sid``, no
    ``nonce``).
``POST /revoke``
    RFC 7009, client-authenticated like ``/token``: a refresh token takes its whole family with
    it, an access token only itself; 200 for an unknown token.
``POST /introspect``
    RFC 7662, client-authenticated like ``/token``; a client sees only its own tokens
    (``active: false`` for another's, or an unknown, expired, revoked or used one). Introspecting
    a refresh token is not a presentation.
``GET /userinfo``
    Bearer-protected: ``{"sub", "name", "email", "token_fingerprint"}`` (:func:`fingerprint` of
    the access token: 8 hex digits of a SHA-256); 401 for a missing, unknown, expired or revoked
    token.
``GET /jwks``
    The public signing keys (RSA 2048, RS256, a ``kid`` each; a new key per provider).
``GET|POST /end_session``
    RP-initiated logout: ``id_token_hint`` (signature and ``iss`` checked, expiry not) names the
    session, which ends (its family is revoked, whatever its scope) and is announced on the
    back-channel; then a 302 to ``post_logout_redirect_uri`` (registered, or loopback) with
    ``state``, or a small "signed out" page.
``GET /.well-known/openid-configuration``, ``GET /.well-known/oauth-authorization-server``
    One metadata document for both (OpenID Connect Discovery 1.0, RFC 8414); ``issuer`` is the
    server's base URL (``ProviderConfig.issuer`` to set another), whatever the ``Host`` header.

A session is the token family of one sign-in: its ``sid`` is in every ID token of the family.
When one ends (``/end_session``, ``/_admin/logout``), a client with a back-channel logout URI
(``backchannel_logout_uri``: loopback URLs only) is sent a logout token (Back-Channel Logout 1.0:
``iss``, ``aud``, ``iat``, ``exp``, ``jti``, ``sub``, ``sid``, ``events``, never ``nonce``; header
``typ: logout+jwt``) before the answer, with a bounded timeout. ID and logout tokens are signed
by joserfc.

Admin API, for tests that drive the provider from other processes. It has no credentials; it
answers only requests whose peer address is loopback (403 for any other), whatever address the
server listens on, and its POSTs need a JSON body (415 otherwise); a web page cannot send one
without a CORS preflight. :class:`flask_tokenguard.testing.ProviderHandle` drives it over HTTP:

``GET /_admin/stats``
    The counters: ``refresh_requests``, ``presentations`` (per refresh token fingerprint),
    ``max_presentations``, ``consume_attempts``/``max_consume_attempts`` (presentations that
    reached the check-and-consume, i.e. were not turned away by a fault first), ``refreshes``
    (committed rotations), ``reuse_detected``, ``grace_reuses``, ``families_revoked``,
    ``invalid_grants``, ``code_exchanges``, ``admin_issued``, ``client_credentials_requests``,
    ``client_credentials_issued``, ``id_tokens``, ``revocations`` (RFC 7009 requests answered
    200), ``introspections``, ``end_sessions`` (accepted ``/end_session`` requests),
    ``sessions_ended``, ``backchannel_logouts`` (delivered), ``backchannel_logout_failures``,
    ``faults_fired``, the pending ``faults`` and the current ``settings``.
``GET /_admin/issued``
    ``{"access_tokens": [...], "refresh_tokens": [...], "id_tokens": [...]}``: every token value
    issued since the last reset, so tests can scan stores and logs for them.
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
    logout (no logout token is sent).
``POST /_admin/logout``
    ``{"sub": "alice"}`` and/or ``{"sid": "..."}``: end those sessions as ``/end_session`` does
    (families revoked, logout tokens sent); answers ``{"ended", "sids", "delivered"}``.
``POST /_admin/keys/rotate``
    ``{"keep_old": true}``: sign with a new key from now on, the old ones still published (or
    dropped with ``false``); answers ``{"kid", "kids"}``. Keys survive ``/_admin/reset``.

Faults (:data:`FAULTS`) apply to refresh-grant and client-credentials requests. Each takes a
count: ``n > 0`` for the next ``n`` requests it applies to, ``True`` or ``-1`` until cleared,
``0``/``False``/``None`` to clear it. ``unavailable_before``, ``invalid_client`` and ``status``
(unless ``status_after_consume``) answer before the refresh token is looked at; the others act
only on a grant that was committed (token rotated, new tokens stored).

``id_token_fault`` (one of :data:`ID_TOKEN_FAULTS`) spoils the next ID token issued, once:
``wrong_sub``, ``wrong_iss``, ``wrong_aud`` (``aud`` and ``azp``), ``wrong_nonce`` and ``expired``
(``exp`` 10 minutes ago) are validly signed with one claim wrong; ``bad_signature`` flips a bit
of the signature, ``alg_none`` is unsigned (``alg: none``), ``unknown_kid`` is signed by a key
that is not in the JWKS. It is listed under ``faults`` until used, counted in ``faults_fired``.

Safe by default: the server listens on loopback only unless told otherwise in so many words
(``--unsafe-expose-demo-provider``, ``ProviderServer(unsafe_expose=True)``), and the app answers
only to the host names it serves (``TRUSTED_HOSTS``), so a DNS rebinding page gets 400.

Run it on its own with ``python -m flask_tokenguard.demo_provider --port 5001``, in a test with
:class:`ProviderServer`, or under any WSGI server from ONE process (threads are fine: the state
lives in that process's memory, so several workers would each keep their own). Token values are
never logged, not even at DEBUG (Authlib's own "Issue token" lines are filtered out); log lines
carry fingerprints at most. The access log of a non-quiet server leaves ``id_token_hint`` out.

The modules, one concern each: ``config`` (settings, fault names, fingerprints), ``models``
(clients, tokens, families), ``state`` (storage, counters, faults, under one lock), ``identity``
(signing keys, ID and logout tokens), ``grants`` (Authlib glue), ``backchannel`` (logout token
delivery), ``app`` (routes and the admin API), ``server`` (the threaded server), ``cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .app import create_provider_app, get_provider_state
    from .cli import main
    from .config import FAULTS, ID_TOKEN_FAULTS, ProviderConfig, fingerprint
    from .server import ProviderServer, UnsafeHostError
    from .state import ProviderState

_WHERE = {
    "create_provider_app": ".app",
    "get_provider_state": ".app",
    "main": ".cli",
    "FAULTS": ".config",
    "ID_TOKEN_FAULTS": ".config",
    "ProviderConfig": ".config",
    "fingerprint": ".config",
    "ProviderServer": ".server",
    "UnsafeHostError": ".server",
    "ProviderState": ".state",
}

__all__ = [
    "FAULTS",
    "ID_TOKEN_FAULTS",
    "ProviderConfig",
    "ProviderServer",
    "ProviderState",
    "UnsafeHostError",
    "create_provider_app",
    "fingerprint",
    "get_provider_state",
    "main",
]


def _needs_authlib(submodule: str) -> None:
    if submodule == ".config":
        return
    try:
        import authlib  # noqa: F401 (only: is the demo extra installed?)
    except ImportError as error:
        raise ImportError(
            "the demo provider needs Authlib, from the demo extra: "
            'pip install "flask-tokenguard[demo]"'
        ) from error


__getattr__, __dir__ = lazy_names(__name__, _WHERE, _needs_authlib)
