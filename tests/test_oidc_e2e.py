"""End to end against node-oidc-provider, configured by its metadata URL alone.

A new user signs in (client id, secret, metadata URL and ``prompt=consent``), sees who they
are, survives bursts across 4 gunicorn workers after expiry (one refresh per rotation, nothing
fails, the grant alive), and signs out so that the provider refuses the old refresh token.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from .fixtures.apps import burst
from .fixtures.oidc_app import oidc_app
from .fixtures.servers import free_port

pytestmark = pytest.mark.slow

CONSENT = {"prompt": "consent"}


def sign_in(oidc: Any, base: str, browser: requests.Session | None = None) -> requests.Session:
    """The user's browser: /login, the provider's login and consent pages, the callback.

    ``browser``: the session that keeps the provider's cookies (for a logout there later).
    """
    http = requests.Session()
    to_provider = http.get(f"{base}/login", allow_redirects=False, timeout=10)
    assert to_provider.status_code == 302
    with requests.Session() as fresh:
        at_provider = browser if browser is not None else fresh
        callback = oidc.login(at_provider, to_provider.headers["Location"], username="carol")
    reply = http.get(callback, timeout=10)
    assert reply.status_code == 200, reply.text
    return http


def test_sign_in_with_the_metadata_url_alone(make_oidc_provider, tmp_path):
    port = free_port()
    oidc = make_oidc_provider(redirect_uris=[f"http://127.0.0.1:{port}/callback"])
    app = oidc_app(oidc, tmp_path, TOKENGUARD_AUTHORIZE_PARAMS=CONSENT)
    with serve_on(port, app) as base:
        http = sign_in(oidc, base)
        me = http.get(f"{base}/me", timeout=10).json()
        assert me["sub"] == "carol" and me["claims"]["iss"] == oidc.issuer
        tokens = http.get(f"{base}/_test/token", timeout=10).json()
        assert tokens["refresh_token"]  # prompt=consent kept offline_access
        assert http.get(f"{base}/api/profile", timeout=10).json()["profile"]["sub"] == "carol"


def test_without_prompt_consent_the_missing_refresh_token_is_named(
    make_oidc_provider, tmp_path, caplog
):
    port = free_port()
    oidc = make_oidc_provider(redirect_uris=[f"http://127.0.0.1:{port}/callback"])
    app = oidc_app(oidc, tmp_path)
    with caplog.at_level("WARNING", logger="flask_tokenguard"):
        with serve_on(port, app) as base:
            sign_in(oidc, base)
    assert "no refresh token" in caplog.text and "prompt=consent" in caplog.text


def test_bursts_across_four_gunicorn_workers_then_sign_out(make_oidc_provider, gunicorn, tmp_path):
    port = free_port()
    oidc = make_oidc_provider(redirect_uris=[f"http://127.0.0.1:{port}/callback"], access_ttl=2)
    server = gunicorn(
        f"file://{tmp_path / 'store'}",
        workers=4,
        threads=8,
        port=port,
        TG_OIDC_METADATA_URL=oidc.discovery_url,
        TG_OIDC_CLIENT_ID=oidc.client_id,
        TG_OIDC_CLIENT_SECRET=oidc.client_secret,
        TG_OIDC_USERINFO_URL=oidc.endpoint("userinfo"),
        TG_CONFIG=json.dumps({"TOKENGUARD_AUTHORIZE_PARAMS": CONSENT}),
    )
    base = server.url
    http = sign_in(oidc, base)
    assert http.get(f"{base}/me", timeout=10).json()["sub"] == "carol"
    oidc.reset_stats()
    for rotation in (1, 2):
        time.sleep(2.2)  # the access token has expired
        result = burst(http, f"{base}/api/profile", 24)
        assert result.statuses == [200] * 24, result.statuses
        stats = oidc.stats()
        assert stats["refresh_requests"] == rotation
        assert stats["max_presentations"] == 1
    newest = http.get(f"{base}/_test/token", timeout=10).json()
    assert oidc.introspect(newest["refresh_token"])["active"] is True  # the grant lives
    assert http.get(f"{base}/me", timeout=10).json()["sub"] == "carol"

    assert http.get(f"{base}/logout", timeout=10).status_code == 200
    refused = oidc.refresh(newest["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant"
    assert http.get(f"{base}/me", timeout=10).status_code == 401
    assert http.get(f"{base}/api/profile", timeout=10).status_code == 401


# -- helpers -------------------------------------------------------------------------------------


@contextmanager
def serve_on(port: int, app: Any) -> Iterator[str]:
    """Serve ``app`` on a port picked beforehand (registered at the provider first)."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_example_app_runs_on_the_metadata_url_and_client_credentials(
    make_oidc_provider, tmp_path, monkeypatch
):
    import example_app

    port = free_port()
    oidc = make_oidc_provider(redirect_uris=[f"http://127.0.0.1:{port}/callback"])
    for name in ("TOKENGUARD_TOKEN_URL", "TOKENGUARD_AUTHORIZE_URL", "EXAMPLE_API_URL"):
        monkeypatch.delenv(f"FLASK_{name}", raising=False)
    monkeypatch.setenv("FLASK_TOKENGUARD_SERVER_METADATA_URL", oidc.discovery_url)
    monkeypatch.setenv("FLASK_TOKENGUARD_CLIENT_ID", oidc.client_id)
    monkeypatch.setenv("FLASK_TOKENGUARD_CLIENT_SECRET", oidc.client_secret)
    monkeypatch.setenv("FLASK_TOKENGUARD_AUTHORIZE_PARAMS", json.dumps(CONSENT))
    app = example_app.create_app(instance_path=str(tmp_path / "instance"))
    with serve_on(port, app) as base:
        http = requests.Session()
        assert http.get(f"{base}/api/me", timeout=10).status_code == 401
        to_provider = http.get(f"{base}/login", allow_redirects=False, timeout=10)
        with requests.Session() as at_provider:
            callback = oidc.login(at_provider, to_provider.headers["Location"], username="dave")
        assert http.get(callback, allow_redirects=False, timeout=10).status_code == 302
        me = http.get(f"{base}/api/me", timeout=10).json()
        assert me["sub"] == "dave"
        profile = http.get(f"{base}/api/profile", timeout=10)  # the discovered userinfo
        assert profile.status_code == 200 and profile.json()["profile"]["sub"] == "dave"
        assert "Signed in as <strong>dave</strong>" in http.get(f"{base}/", timeout=10).text
