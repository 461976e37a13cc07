"""The provider's Flask app: the OAuth endpoints and the ``/_admin/`` API.

Safe by default: the app answers only to the host names it serves (Flask's ``TRUSTED_HOSTS``:
a request with a foreign ``Host`` header, as a DNS rebinding attack sends, gets 400), and the
admin API answers only requests whose peer address is loopback (403 otherwise).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any, Final, cast

from authlib.common.urls import add_params_to_uri
from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Request, Response, jsonify, request

from .backchannel import announce_logout
from .config import (
    CLAIMS_SUPPORTED,
    CLIENT_CREDENTIALS_GRANT,
    CODE_GRANT,
    ID_TOKEN_ALG,
    LOOPBACK_HOSTS,
    REFRESH_GRANT,
    SCOPES_SUPPORTED,
    TOKEN_AUTH_METHODS,
    ProviderConfig,
    fingerprint,
    is_loopback,
)
from .grants import (
    AuthorizationCodeGrant,
    BearerValidator,
    ClientCredentialsGrant,
    IntrospectionEndpoint,
    ProviderAuthorizationServer,
    RefreshTokenGrant,
    RequireS256,
    RevocationEndpoint,
    issuer_of,
    silence_authlib_token_logs,
)
from .identity import InvalidHintError
from .models import DemoUser
from .state import ProviderState

__all__ = ["create_provider_app", "get_provider_state"]

EXTENSION_KEY: Final = "tokenguard_demo_provider"

_BEFORE_CONSUME: Final = ("invalid_client", "unavailable_before", "status")
_AFTER_COMMIT: Final = ("drop_after_commit", "status", "garbage")

_GARBAGE_BODY: Final = (
    "<!DOCTYPE html>\n<html><head><title>Sign in</title></head>"
    "<body><h1>Please sign in</h1><p>Your session has ended.</p></body></html>\n"
)


_BRACKETED_HOST: Final = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::[1-9][0-9]{0,4})?")


def _is_trusted_ipv6_host(host_header: str | None, trusted: Iterable[str]) -> bool:
    """``[::1]:5001`` against ``::1``: the one host form werkzeug's own check cannot match."""
    match = _BRACKETED_HOST.fullmatch(host_header or "")
    if match is None:
        return False
    try:
        address = ipaddress.IPv6Address(match.group(1))
    except ValueError:
        return False
    for entry in trusted:
        try:
            if ipaddress.IPv6Address(entry.strip("[]")) == address:
                return True
        except ValueError:
            continue
    return False


class _ProviderRequest(Request):
    """Flask's request; a bracketed IPv6 ``Host`` listed in ``TRUSTED_HOSTS`` is trusted too.

    Werkzeug (3.1) compares ``[::1]:5001`` with no entry successfully, which would make a
    provider on ``::1`` answer 400 to everything. Such a header is matched here instead, and
    werkzeug's check (which the ``TRUSTED_HOSTS`` config feeds) then skipped for it.
    """

    _trusted: list[str] | None = None

    @property
    def trusted_hosts(self) -> list[str] | None:
        trusted = self._trusted
        if trusted and _is_trusted_ipv6_host(self.environ.get("HTTP_HOST"), trusted):
            return None
        return trusted

    @trusted_hosts.setter
    def trusted_hosts(self, value: list[str] | None) -> None:
        self._trusted = value


def get_provider_state(app: Flask) -> ProviderState:
    """The :class:`ProviderState` of an app made by :func:`create_provider_app`."""
    return cast(ProviderState, app.extensions[EXTENSION_KEY])


def create_provider_app(
    config: ProviderConfig | None = None, *, trusted_hosts: Iterable[str] = ()
) -> Flask:
    """Build the provider's Flask app; its state is :func:`get_provider_state` (app).

    The app answers to ``127.0.0.1``, ``localhost`` and ``::1`` and to the names in
    ``trusted_hosts`` (Flask's ``TRUSTED_HOSTS``; any other ``Host`` header gets 400).
    """
    config = config or ProviderConfig()
    silence_authlib_token_logs()
    app = Flask(__name__)
    app.request_class = _ProviderRequest
    app.config.update(
        OAUTH2_REFRESH_TOKEN_GENERATOR=True,
        OAUTH2_SCOPES_SUPPORTED=None,
        TRUSTED_HOSTS=served_hosts(trusted_hosts),
    )
    if "TRUSTED_HOSTS" not in Flask.default_config:  # pragma: no cover - Flask 3.0

        @app.before_request
        def served_hosts_only() -> None:
            request.trusted_hosts = app.config["TRUSTED_HOSTS"]
            _ = request.host  # werkzeug raises SecurityError (400) for a foreign Host

    state = ProviderState(config)
    app.extensions[EXTENSION_KEY] = state
    server = ProviderAuthorizationServer(app, state)
    server.register_grant(AuthorizationCodeGrant, [RequireS256(required=True)])
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    require_oauth = ResourceProtector()
    require_oauth.register_token_validator(BearerValidator(state))

    @app.get("/authorize")
    def authorize() -> Response:
        sub = request.args.get("login_hint") or request.args.get("user") or config.default_user
        user = DemoUser(sub)
        try:
            grant = server.get_consent_grant(end_user=user)
        except OAuth2Error as error:
            reply = cast(Response, server.handle_error_response(None, error))
        else:
            reply = cast(
                Response, server.create_authorization_response(grant_user=user, grant=grant)
            )
        if reply.status_code == 302 and reply.location:
            # RFC 9207: every authorization response, errors too, names its issuer.
            reply.location = add_params_to_uri(reply.location, {"iss": issuer_of(state)})
        return reply

    @app.post("/token")
    def token() -> Response:
        grant_type = request.form.get("grant_type")
        if grant_type == REFRESH_GRANT:
            state.note_refresh_request(request.form.get("refresh_token"))
            return _with_faults(state, server)
        if grant_type == CLIENT_CREDENTIALS_GRANT:
            state.count("client_credentials_requests")
            return _with_faults(state, server, delay=state.settings.refresh_delay)
        return cast(Response, server.create_token_response())

    @app.post("/revoke")
    def revoke() -> Response:
        return cast(Response, server.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME))

    @app.post("/introspect")
    def introspect() -> Response:
        return cast(Response, server.create_endpoint_response(IntrospectionEndpoint.ENDPOINT_NAME))

    @app.get("/userinfo")
    def userinfo() -> Response:
        with require_oauth.acquire() as record:  # 401 for missing/unknown/expired/revoked
            user = record.get_user()
        return jsonify(
            sub=user.sub,
            name=user.name,
            email=user.email,
            token_fingerprint=fingerprint(record.access_token),
        )

    @app.get("/jwks")
    def jwks() -> Response:
        return jsonify(state.keys.jwks())

    @app.get("/.well-known/openid-configuration")
    @app.get("/.well-known/oauth-authorization-server")
    def metadata() -> Response:
        # One document for both: OpenID Connect Discovery 1.0 and RFC 8414.
        return jsonify(provider_metadata(issuer_of(state)))

    @app.route("/end_session", methods=["GET", "POST"])
    def end_session() -> Response:
        return _end_session(state)

    app.register_blueprint(_admin_blueprint(state))
    return app


def provider_metadata(issuer: str) -> dict[str, Any]:
    """The discovery document (OpenID Connect Discovery 1.0, RFC 8414, RFC 9207)."""
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "jwks_uri": f"{issuer}/jwks",
        "revocation_endpoint": f"{issuer}/revoke",
        "introspection_endpoint": f"{issuer}/introspect",
        "end_session_endpoint": f"{issuer}/end_session",
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": [CODE_GRANT, REFRESH_GRANT, CLIENT_CREDENTIALS_GRANT],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
        "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
        "revocation_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
        "introspection_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": SCOPES_SUPPORTED,
        "claims_supported": CLAIMS_SUPPORTED,
        "authorization_response_iss_parameter_supported": True,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
    }


def served_hosts(extra: Iterable[str] = ()) -> list[str]:
    """The loopback names and ``extra``, without duplicates: the app's ``TRUSTED_HOSTS``."""
    hosts: list[str] = []
    for host in (*LOOPBACK_HOSTS, *extra):
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _with_faults(
    state: ProviderState, server: ProviderAuthorizationServer, *, delay: float = 0.0
) -> Response:
    """A refresh or client-credentials request with its faults around Authlib's processing.

    ``delay``: seconds to sleep once past the faults that answer first (the refresh grant takes
    its ``refresh_delay`` inside the check-and-consume instead).
    """
    fault = state.take_fault(_BEFORE_CONSUME, after_commit=False)
    if fault == "invalid_client":
        return _json({"error": "invalid_client"}, 401, {"WWW-Authenticate": 'Basic realm="demo"'})
    if fault == "unavailable_before":
        return _json({"error": "temporarily_unavailable"}, 503, {"Retry-After": "2"})
    if fault == "status":
        return _status_response(state.settings)
    state.sleep(delay)
    response = cast(Response, server.create_token_response())
    if response.status_code != 200:
        return response
    # The grant is committed: a refresh token is used, the new tokens are stored.
    if state.take_fault(("hang",), after_commit=True):
        state.sleep(state.settings.hang_seconds)
    fault = state.take_fault(_AFTER_COMMIT, after_commit=True)
    if fault == "drop_after_commit":
        _drop_connection()
    elif fault == "status":
        return _status_response(state.settings)
    elif fault == "garbage":
        return Response(_GARBAGE_BODY, 200, content_type="text/html; charset=utf-8")
    return response


def _end_session(state: ProviderState) -> Response:
    """RP-initiated logout 1.0: end the session the ID token names, then send the browser back.

    The session is the token family of that sign-in: it is revoked (``offline_access`` or not),
    and the client hears of it on its back-channel logout URI if it has one. Without an
    ``id_token_hint`` there is no session to end (this provider keeps no browser session), but
    the redirect still happens for a known client.
    """
    values = request.values
    issuer = issuer_of(state)
    hint = values.get("id_token_hint")
    client_id = values.get("client_id")
    redirect_uri = values.get("post_logout_redirect_uri")
    claims: dict[str, Any] | None = None
    if hint:
        try:
            claims = state.keys.verify_hint(hint, issuer)
        except InvalidHintError as error:
            return _json({"error": "invalid_request", "error_description": str(error)}, 400)
        if client_id and client_id != claims["aud"]:
            return _json(
                {
                    "error": "invalid_request",
                    "error_description": "client_id is not the audience of id_token_hint",
                },
                400,
            )
        client_id = str(claims["aud"])
    client = state.clients.get(client_id or "")
    if redirect_uri and (client is None or not client.check_post_logout_redirect_uri(redirect_uri)):
        return _json(
            {
                "error": "invalid_request",
                "error_description": "post_logout_redirect_uri is not registered for the client",
            },
            400,
        )
    state.count("end_sessions")
    if claims is not None and isinstance(claims.get("sid"), str):
        ended = state.end_sessions(sid=claims["sid"], sub=str(claims["sub"]))
        announce_logout(state, ended, issuer)
    if redirect_uri:
        params = {"state": values["state"]} if values.get("state") else {}
        reply = Response(status=302)
        reply.location = add_params_to_uri(redirect_uri, params) if params else redirect_uri
        reply.headers["Cache-Control"] = "no-store"
        return reply
    return Response(
        "<!DOCTYPE html>\n<html><head><title>Signed out</title></head>"
        "<body><h1>You are signed out.</h1></body></html>\n",
        200,
        content_type="text/html; charset=utf-8",
    )


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers.update(headers or {})
    response.headers["Cache-Control"] = "no-store"
    return response


def _status_response(settings: ProviderConfig) -> Response:
    body = settings.status_body
    headers = {}
    if settings.status_retry_after is not None:
        headers["Retry-After"] = str(settings.status_retry_after)
    if isinstance(body, dict):
        return _json(body, settings.status_code, headers)
    if body is None:
        body = f"<html><body><h1>{settings.status_code}</h1><p>Upstream error.</p></body></html>"
    return Response(body, settings.status_code, headers, content_type="text/html; charset=utf-8")


def _drop_connection() -> None:
    """Close the client's TCP connection now, so no HTTP response can ever reach it.

    The server's later attempt to write the response fails with a broken pipe, which both
    werkzeug and gunicorn treat as a client disconnect.
    """
    sock = request.environ.get("werkzeug.socket") or request.environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        raise RuntimeError("drop_after_commit needs werkzeug's or gunicorn's server")
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # the client is already gone: the effect we wanted


def _admin_blueprint(state: ProviderState) -> Blueprint:
    """The ``/_admin/`` API: the test oracle and fault switches for other processes."""
    admin = Blueprint("demo_provider_admin", __name__, url_prefix="/_admin")

    @admin.before_request
    def loopback_peers_only() -> Response | None:
        # It mints tokens and lists every token issued: never for another machine, whatever
        # address the server listens on. (Behind a local reverse proxy every peer is loopback:
        # do not put one in front of this provider.)
        if not is_loopback(request.remote_addr):
            return _json(
                {
                    "error": "access_denied",
                    "error_description": "the admin API answers loopback clients only",
                },
                403,
            )
        if request.method == "POST" and not request.is_json:
            # A web page can send a form or text/plain POST to 127.0.0.1 without asking; a JSON
            # one needs a CORS preflight, which this API never grants.
            return _json(
                {
                    "error": "invalid_request",
                    "error_description": "admin requests carry a JSON body",
                },
                415,
            )
        return None

    def body() -> dict[str, Any]:
        data = request.get_json(silent=True)
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("the JSON body must be an object")
        return data

    @admin.errorhandler(ValueError)
    def bad_request(error: ValueError) -> Response:
        return _json({"error": "invalid_request", "error_description": str(error)}, 400)

    @admin.get("/stats")
    def stats() -> Response:
        return jsonify(state.stats())

    @admin.get("/issued")
    def issued() -> Response:
        return jsonify(state.issued())

    @admin.route("/faults", methods=["GET", "POST"])
    def faults() -> Response:
        if request.method == "POST":
            state.set_faults(**body())
        current = state.stats()
        return jsonify(faults=current["faults"], settings=current["settings"])

    @admin.post("/reset")
    def reset() -> Response:
        state.reset(drop_tokens=bool(body().get("drop_tokens", False)))
        return jsonify(ok=True)

    @admin.post("/issue")
    def issue() -> Response:
        data = body()
        expires_in = data.get("expires_in")
        if expires_in is not None and type(expires_in) is not int:
            raise ValueError("expires_in must be an integer")
        token = state.issue(
            sub=data.get("sub"),
            expires_in=expires_in,
            client_id=data.get("client_id"),
            scope=str(data.get("scope") or ""),
            issuer=issuer_of(state),
        )
        return _json(token, 200)

    @admin.post("/keys/rotate")
    def rotate_keys() -> Response:
        keep_old = body().get("keep_old", True)
        if not isinstance(keep_old, bool):
            raise ValueError("keep_old must be a bool")
        kid = state.keys.rotate(keep_old=keep_old)
        return jsonify(kid=kid, kids=state.keys.kids())

    @admin.post("/logout")
    def logout() -> Response:
        data = body()
        sid, sub = data.get("sid"), data.get("sub")
        if not all(value is None or isinstance(value, str) for value in (sid, sub)):
            raise ValueError("sid and sub must be strings")
        ended = state.end_sessions(sid=sid, sub=sub)  # ValueError without either
        delivered = announce_logout(state, ended, issuer_of(state))
        return jsonify(ended=len(ended), sids=[family.sid for family in ended], delivered=delivered)

    @admin.post("/revoke")
    def revoke() -> Response:
        if not state.revoke_family_of(str(body().get("token") or "")):
            return _json({"error": "not_found"}, 404)
        return jsonify(ok=True)

    return admin
