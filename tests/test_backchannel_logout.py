"""OpenID Connect Back-Channel Logout 1.0: the provider ends sessions of this app.

docs/design.md, "Where tokens live". The provider POSTs a logout token to
``guard.backchannel_logout``; a valid one (signature, ``iss``, ``aud``, ``iat``, the event,
``sid`` or ``sub``, no ``nonce``, a ``jti`` not seen before) deletes the records of the sessions
it names, so they are unauthorized at their next request with no provider call. Tested with the
bundled demo provider and end to end with node-oidc-provider.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from flask import Flask

from flask_tokenguard.testing import ProviderConfig, ProviderHandle, ProviderServer

from .fixtures.oidc_app import oidc_app
from .fixtures.servers import free_port
from .test_oidc_e2e import CONSENT, serve_on
from .test_oidc_e2e import sign_in as sign_in_at_node

EVENT = "http://schemas.openid.net/event/backchannel-logout"


@contextmanager
def demo_setup(tmp_path: Any, **config: Any) -> Iterator[tuple[ProviderServer, str]]:
    """The demo provider, told to send logout tokens to the app, and the app on its port."""
    with demo_app_setup(tmp_path, **config) as (server, base, _app):
        yield server, base


@contextmanager
def demo_app_setup(tmp_path: Any, **config: Any) -> Iterator[tuple[ProviderServer, str, Flask]]:
    """As :func:`demo_setup`, with the app itself too."""
    port = free_port()
    provider_config = ProviderConfig(
        access_ttl=3600, backchannel_logout_uri=f"http://127.0.0.1:{port}/backchannel-logout"
    )
    with ProviderServer(provider_config) as server:
        handle = ProviderHandle(server)
        app = oidc_app(handle, tmp_path, **config)
        guard = app.extensions["tokenguard_guard"]
        app.add_url_rule(
            "/backchannel-logout", view_func=guard.backchannel_logout, methods=["POST"]
        )
        with serve_on(port, app) as base:
            yield server, base, app


def demo_sign_in(base: str) -> requests.Session:
    http = requests.Session()
    reply = http.get(f"{base}/login", allow_redirects=False, timeout=10)
    reply = http.get(reply.headers["Location"], allow_redirects=False, timeout=10)
    assert http.get(reply.headers["Location"], timeout=10).status_code == 200
    return http


def logout_token(server: ProviderServer, **changes: Any) -> str:
    """A logout token signed by the demo provider's key, with ``changes`` to its claims."""
    now = int(time.time())
    claims = {
        "iss": server.url,
        "aud": server.config.client_id,
        "iat": now,
        "exp": now + 120,
        "jti": f"jti-{time.monotonic_ns()}",
        "sub": "alice",
        "sid": "some-sid",
        "events": {EVENT: {}},
        **changes,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    return server.state.keys.sign(claims, typ="logout+jwt")


def test_a_logout_from_the_provider_ends_the_named_session_only(tmp_path):
    with demo_setup(tmp_path) as (server, base):
        handle = ProviderHandle(server)
        first, second = demo_sign_in(base), demo_sign_in(base)
        sid = first.get(f"{base}/me", timeout=10).json()["claims"]["sid"]
        assert sid != second.get(f"{base}/me", timeout=10).json()["claims"]["sid"]
        refreshes = handle.stats()["refresh_requests"]

        ended = handle.logout(sid=sid)
        assert ended["delivered"] == 1
        assert first.get(f"{base}/api/profile", timeout=10).status_code == 401
        assert second.get(f"{base}/api/profile", timeout=10).status_code == 200
        assert handle.stats()["refresh_requests"] == refreshes  # no provider call


def test_a_logout_naming_only_the_subject_ends_all_of_its_sessions(tmp_path):
    with demo_setup(tmp_path) as (server, base):
        devices = [demo_sign_in(base), demo_sign_in(base)]
        reply = requests.post(
            f"{base}/backchannel-logout",
            data={"logout_token": logout_token(server, sid=None)},
            timeout=10,
        )
        assert reply.status_code == 200 and reply.headers["Cache-Control"] == "no-store"
        assert [d.get(f"{base}/api/profile", timeout=10).status_code for d in devices] == [
            401,
            401,
        ]


@pytest.mark.parametrize(
    "defect",
    [
        {"iss": "https://elsewhere.example"},
        {"aud": "another-client"},
        {"iat": int(time.time()) - 3600, "exp": None},
        {"iat": int(time.time()) + 3600},
        {"events": {"http://example.com/other": {}}},
        {"nonce": "n"},
        {"sid": None, "sub": None},
        {"jti": None},
    ],
)
def test_an_invalid_logout_token_is_refused_and_ends_nothing(tmp_path, defect, caplog):
    with demo_setup(tmp_path) as (server, base):
        device = demo_sign_in(base)
        sid = device.get(f"{base}/me", timeout=10).json()["claims"]["sid"]
        token = logout_token(server, **{"sid": sid, **defect})
        reply = requests.post(
            f"{base}/backchannel-logout", data={"logout_token": token}, timeout=10
        )
        assert reply.status_code == 400
        assert device.get(f"{base}/api/profile", timeout=10).status_code == 200
        assert "back-channel logout was refused" in caplog.text


def test_a_replayed_or_forged_logout_token_is_refused(tmp_path):
    with demo_setup(tmp_path) as (server, base):
        device = demo_sign_in(base)
        sid = device.get(f"{base}/me", timeout=10).json()["claims"]["sid"]
        other = demo_sign_in(base)
        other_sid = other.get(f"{base}/me", timeout=10).json()["claims"]["sid"]
        used = logout_token(server, sid=sid)
        post = {"timeout": 10}
        assert requests.post(f"{base}/backchannel-logout", data={"logout_token": used}, **post).ok
        replay = requests.post(f"{base}/backchannel-logout", data={"logout_token": used}, **post)
        assert replay.status_code == 400
        forged = used.rsplit(".", 1)[0] + ".AAAA"
        assert (
            requests.post(
                f"{base}/backchannel-logout", data={"logout_token": forged}, **post
            ).status_code
            == 400
        )
        assert other.get(f"{base}/api/profile", timeout=10).status_code == 200
        assert other_sid != sid


def test_with_tokens_in_the_session_the_view_says_it_cannot(tmp_path):
    with demo_setup(tmp_path, TOKENGUARD_TOKEN_STORAGE="session") as (server, base):
        reply = requests.post(
            f"{base}/backchannel-logout", data={"logout_token": logout_token(server)}, timeout=10
        )
        assert reply.status_code == 501


@pytest.mark.slow
def test_node_oidc_provider_back_channel_logout_ends_the_session(make_oidc_provider, tmp_path):
    """node-oidc-provider's RP-initiated logout notifies this app over the back channel."""
    port = free_port()
    oidc = make_oidc_provider(
        redirect_uris=[f"http://127.0.0.1:{port}/callback"],
        backchannel_logout_uri=f"http://127.0.0.1:{port}/backchannel-logout",
    )
    app = oidc_app(oidc, tmp_path, TOKENGUARD_AUTHORIZE_PARAMS=CONSENT)
    guard = app.extensions["tokenguard_guard"]
    app.add_url_rule("/backchannel-logout", view_func=guard.backchannel_logout, methods=["POST"])
    with serve_on(port, app) as base:
        with requests.Session() as browser:
            http = sign_in_at_node(oidc, base, browser=browser)
            assert http.get(f"{base}/api/profile", timeout=10).status_code == 200
            id_token = http.get(f"{base}/_test/token", timeout=10).json()["id_token"]
            oidc.logout(browser, id_token)  # at the provider, in the same browser session
        assert http.get(f"{base}/api/profile", timeout=10).status_code == 401
