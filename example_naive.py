"""The example's naive route: ``/api/profile-naive``, refreshed the way requests-oauthlib shows.

Without flask-tokenguard, every request that finds the access token expired refreshes on its
own: a burst presents one refresh token many times, and a strict provider revokes the whole
token family. This module shows that, apart from the example's main code: a blueprint exempt
from the extension's hook, and the route's own sealed copy of the token in the session.

``example_app.py`` registers it with ``app.register_blueprint(example_naive.blueprint(guard))``
and lets the copy follow the extension's token with :func:`follow` and :func:`forget`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import urlsplit

import requests
from cryptography.fernet import Fernet, InvalidToken
from flask import Blueprint, current_app, jsonify, session
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from oauthlib.oauth2 import InsecureTransportError, OAuth2Error
from requests_oauthlib import OAuth2Session

from flask_tokenguard import ConfigurationError, TokenGuard
from flask_tokenguard.discovery import Endpoints

#: The session key of the naive route's copy (the extension keeps its token under its own key).
NAIVE_KEY = "example_naive_token"
EXTENSION = "example_naive"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def blueprint(guard: TokenGuard) -> Blueprint:
    """The naive route, exempt from ``guard``'s hook: the extension must not refresh first."""
    bp = Blueprint("naive", __name__)
    bp.add_url_rule("/api/profile-naive", view_func=guard.exempt(profile_naive))
    bp.record_once(_setup)
    return bp


def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions[EXTENSION] = NaiveTokens(state.app.config["SECRET_KEY"])


def profile_naive() -> ResponseReturnValue:
    """The API call with requests-oauthlib's auto-refresh, and nothing else.

    Every request of a burst that finds the access token expired sends the same refresh token;
    a strict provider answers all but the first with ``invalid_grant`` and revokes the family.
    """
    naive = _tokens()
    token = naive.load()
    if token is None:
        return jsonify(error="not signed in"), 401
    config = current_app.config
    client = OAuth2Session(  # the recipe from requests-oauthlib's documentation
        config["TOKENGUARD_CLIENT_ID"],
        token=token,
        auto_refresh_url=config["TOKENGUARD_TOKEN_URL"] or guard_endpoints().token_url,
        auto_refresh_kwargs={
            "client_id": config["TOKENGUARD_CLIENT_ID"],
            "client_secret": config["TOKENGUARD_CLIENT_SECRET"],
        },
        token_updater=naive.save,
    )
    try:
        reply = client.get(api_url(), timeout=config["EXAMPLE_API_TIMEOUT"])
    except InsecureTransportError:
        message = (
            "requests-oauthlib refuses plain http://; the example allows it only to 127.0.0.1,"
            " localhost and ::1, with TOKENGUARD_ALLOW_INSECURE_LOOPBACK"
        )
        return jsonify(error="insecure_transport", message=message), 500
    except OAuth2Error as exc:  # invalid_grant: the refresh token was used already
        return jsonify(error=exc.error, message=exc.description), 401
    except requests.RequestException as exc:
        return jsonify(error=f"the API did not answer ({type(exc).__name__})"), 502
    finally:
        client.close()
    if reply.status_code == 401:
        return jsonify(error="the API rejected the access token"), 401
    if reply.status_code != 200:
        return jsonify(error=f"the API answered {reply.status_code}"), 502
    try:
        return jsonify(profile=reply.json())
    except ValueError:
        return jsonify(error="the API did not answer JSON"), 502


def guard_endpoints() -> Endpoints:
    """The provider's endpoints as the extension knows them (configured or discovered)."""
    return cast(TokenGuard, current_app.extensions["tokenguard"].guard).endpoints()


def api_url() -> str:
    """``EXAMPLE_API_URL``, by default the provider's userinfo endpoint (discovered)."""
    url = current_app.config.get("EXAMPLE_API_URL") or guard_endpoints().userinfo_url
    if not url:
        raise ConfigurationError("EXAMPLE_API_URL is required: the provider has no userinfo")
    return str(url)


# -- plain http on this host --------------------------------------------------------------------


def allow_loopback_http(config: Mapping[str, Any]) -> bool:
    """Let requests-oauthlib use plain http when the naive route only talks to this host.

    requests-oauthlib refuses ``http://`` unless ``OAUTHLIB_INSECURE_TRANSPORT`` is in the
    environment, which it reads on every call, for every URL: a process-wide switch, so it is
    for a process entry point to set, once, before serving (``python example_app.py`` and the
    ``example_app.app`` that gunicorn loads), never an app factory. It is set only when
    ``TOKENGUARD_ALLOW_INSECURE_LOOPBACK`` is on and every ``http://`` URL the route calls (the
    token endpoint, the API) is on 127.0.0.1, localhost or ::1; https needs nothing. The
    extension's own calls do not depend on it: ``TOKENGUARD_ALLOW_INSECURE_LOOPBACK`` allows
    them loopback http. Returns whether plain http is allowed.
    """
    keys = ("TOKENGUARD_TOKEN_URL", "TOKENGUARD_SERVER_METADATA_URL", "EXAMPLE_API_URL")
    urls = [config.get(key) for key in keys]
    plain = [urlsplit(url) for url in urls if isinstance(url, str) and url.startswith("http://")]
    if not plain:
        return False
    if not config.get("TOKENGUARD_ALLOW_INSECURE_LOOPBACK"):
        return False
    if not all(parts.hostname in LOOPBACK for parts in plain):
        return False
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    return True


# -- the route's own copy of the token ----------------------------------------------------------


class NaiveTokens:
    """The naive route's copy of the token, under its own session key, sealed.

    requests-oauthlib's recipe keeps the token in the session as is; the copy is sealed
    (Fernet, a key derived from SECRET_KEY) so that the session store never holds a token in
    clear. It starts as the token the extension holds, so both routes race from the same one.
    """

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else secret
        digest = hashlib.sha256(b"flask-tokenguard example: naive token\0" + raw).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def load(self) -> dict[str, Any] | None:
        box = _record().get("box")
        if not isinstance(box, str):
            return None
        try:
            token = json.loads(self._fernet.decrypt(box))
        except (InvalidToken, ValueError):
            return None
        return token if isinstance(token, dict) else None

    def save(self, token: Mapping[str, Any]) -> None:
        """The recipe's ``token_updater``: the session now holds the new token."""
        session[NAIVE_KEY] = {
            "rt": _fingerprint(token.get("refresh_token")),
            "box": self._fernet.encrypt(json.dumps(dict(token)).encode()).decode("ascii"),
        }

    def follow(self, token: Mapping[str, Any]) -> None:
        """Take the extension's token when it differs, so both routes start from the same."""
        if _record().get("rt") != _fingerprint(token.get("refresh_token")):
            self.save(token)


def follow(token: Mapping[str, Any]) -> None:
    """The copy follows ``token``, the extension's (call it wherever a view reads that)."""
    _tokens().follow(token)


def forget() -> None:
    """Drop the copy (signed out, or the extension's token is gone)."""
    session.pop(NAIVE_KEY, None)


def _tokens() -> NaiveTokens:
    tokens: NaiveTokens = current_app.extensions[EXTENSION]
    return tokens


def _record() -> dict[str, Any]:
    record = session.get(NAIVE_KEY)
    return record if isinstance(record, dict) else {}


def _fingerprint(value: Any) -> str:
    return hashlib.sha256(str(value).encode()).hexdigest()[:16]
