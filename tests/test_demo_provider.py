"""The demo provider is the test oracle, so its own strictness is tested here, over HTTP."""

from __future__ import annotations

import http.client
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import urllib3

from flask_tokenguard.login import pkce_pair
from flask_tokenguard.testing import (
    DEFAULT_REDIRECT_URI,
    ProviderHandle,
    ProviderServer,
    UnsafeHostError,
    create_provider_app,
    fingerprint,
    get_provider_state,
)
from flask_tokenguard.testing.provider import cli

ROOT = Path(__file__).resolve().parent.parent


def authorize(provider: ProviderHandle, **overrides: Any) -> requests.Response:
    _, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "state": "st-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    return requests.get(provider.authorize_url, params=params, allow_redirects=False, timeout=5)


def redirect_query(reply: requests.Response) -> dict[str, list[str]]:
    assert reply.status_code == 302, reply.text
    return parse_qs(urlsplit(reply.headers["Location"]).query)


# --- login ------------------------------------------------------------------------------------


def test_login_with_code_and_pkce(provider: ProviderHandle) -> None:
    token = provider.login(sub="bob")
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 20
    assert token["access_token"] and token["refresh_token"]

    reply = provider.userinfo(token["access_token"])
    assert reply.status_code == 200
    assert reply.json() == {
        "sub": "bob",
        "name": "Bob",
        "email": "bob@example.com",
        "token_fingerprint": fingerprint(token["access_token"]),
    }
    assert provider.stats()["code_exchanges"] == 1
    assert set(provider.issued_tokens()) == {token["access_token"], token["refresh_token"]}


def test_authorize_auto_approves_default_user_and_passes_state(provider: ProviderHandle) -> None:
    query = redirect_query(authorize(provider, redirect_uri="http://localhost:8123/cb"))
    assert query["state"] == ["st-123"]
    assert query["code"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
    ],
    ids=["no-pkce", "plain", "no-method"],
)
def test_authorize_requires_pkce_s256(provider: ProviderHandle, overrides: Any) -> None:
    query = redirect_query(authorize(provider, **overrides))
    assert query["error"] == ["invalid_request"]
    assert query["state"] == ["st-123"]
    assert "code" not in query


def test_authorize_refuses_foreign_redirect_uri_without_redirecting(
    provider: ProviderHandle,
) -> None:
    reply = authorize(provider, redirect_uri="https://evil.example/cb")
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_request"
    reply = authorize(provider, client_id="nobody")
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_client"


def test_code_needs_the_verifier_and_is_single_use(provider: ProviderHandle) -> None:
    verifier, challenge = pkce_pair()
    query = redirect_query(authorize(provider, code_challenge=challenge))
    form = {
        "grant_type": "authorization_code",
        "code": query["code"][0],
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "code_verifier": verifier,
    }
    auth = (provider.client_id, provider.client_secret)
    first = requests.post(provider.token_url, data=form, auth=auth, timeout=5)
    assert first.status_code == 200
    replay = requests.post(provider.token_url, data=form, auth=auth, timeout=5)
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    # RFC 6749 4.1.2: a replayed code revokes what it issued.
    assert provider.userinfo(first.json()["access_token"]).status_code == 401

    query = redirect_query(authorize(provider))  # challenge of another verifier
    form["code"] = query["code"][0]
    wrong = requests.post(provider.token_url, data=form, auth=auth, timeout=5)
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    assert provider.stats()["code_exchanges"] == 1


def test_public_client_and_client_secret_post(provider: ProviderHandle) -> None:
    token = provider.login(public=True)
    reply = provider.refresh(token["refresh_token"], method="none")
    assert reply.status_code == 200, reply.text
    assert "refresh_token" in reply.json()

    token = provider.login()
    reply = provider.refresh(token["refresh_token"], method="client_secret_post")
    assert reply.status_code == 200, reply.text

    # A confidential client cannot skip authentication; the token stays unconsumed.
    token = provider.issue(expires_in=60)
    form = {
        "grant_type": "refresh_token",
        "refresh_token": token["refresh_token"],
        "client_id": provider.client_id,
    }
    reply = requests.post(provider.token_url, data=form, timeout=5)
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    # Another client's refresh token is refused without consuming it.
    reply = provider.refresh(token["refresh_token"], method="none")
    assert reply.status_code == 400
    assert provider.refresh(token["refresh_token"]).status_code == 200


def test_metadata(provider: ProviderHandle) -> None:
    meta = requests.get(f"{provider.url}/.well-known/oauth-authorization-server", timeout=5).json()
    assert meta["token_endpoint"] == provider.token_url
    assert meta["code_challenge_methods_supported"] == ["S256"]


# --- refresh: rotation, reuse detection, concurrency ------------------------------------------


def test_refresh_rotates(provider: ProviderHandle) -> None:
    token = provider.login()
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200
    new = reply.json()
    assert new["refresh_token"] != token["refresh_token"]
    assert new["access_token"] != token["access_token"]
    assert new["expires_in"] == 20
    assert provider.userinfo(new["access_token"]).json()["sub"] == "alice"
    newer = provider.refresh(new["refresh_token"])
    assert newer.status_code == 200

    stats = provider.stats()
    assert stats["refreshes"] == 2
    assert stats["max_presentations"] == 1
    assert stats["reuse_detected"] == stats["families_revoked"] == 0
    assert provider.presentations(token["refresh_token"]) == 1


def test_reuse_revokes_the_whole_family(provider: ProviderHandle) -> None:
    token = provider.login()
    new = provider.refresh(token["refresh_token"]).json()

    reuse = provider.refresh(token["refresh_token"])
    assert reuse.status_code == 400
    assert reuse.json()["error"] == "invalid_grant"
    for access_token in (token["access_token"], new["access_token"]):
        assert provider.userinfo(access_token).status_code == 401
    assert provider.refresh(new["refresh_token"]).status_code == 400

    stats = provider.stats()
    assert stats["reuse_detected"] == 1
    assert stats["families_revoked"] == 1
    assert stats["refreshes"] == 1
    assert stats["max_presentations"] == 2
    # Other users' families are untouched.
    other = provider.issue(sub="bob", expires_in=60)
    assert provider.userinfo(other["access_token"]).status_code == 200


def test_invalid_grant_status_is_configurable(provider: ProviderHandle) -> None:
    provider.set_faults(invalid_grant_status=403)
    token = provider.issue(expires_in=60)
    assert provider.refresh(token["refresh_token"]).status_code == 200
    reuse = provider.refresh(token["refresh_token"])
    assert reuse.status_code == 403
    assert reuse.json()["error"] == "invalid_grant"


def test_reuse_grace_window(provider: ProviderHandle) -> None:
    provider.set_faults(reuse_grace=30)
    token = provider.issue(expires_in=60)
    first = provider.refresh(token["refresh_token"])
    second = provider.refresh(token["refresh_token"])
    assert first.status_code == second.status_code == 200
    assert provider.userinfo(first.json()["access_token"]).status_code == 200
    stats = provider.stats()
    assert stats["grace_reuses"] == 1
    assert stats["families_revoked"] == 0


def test_without_rotation_the_refresh_token_stays_valid(provider: ProviderHandle) -> None:
    provider.set_faults(rotate=False)
    token = provider.issue(expires_in=60)
    for _ in range(2):
        reply = provider.refresh(token["refresh_token"])
        assert reply.status_code == 200
        assert "refresh_token" not in reply.json()
    stats = provider.stats()
    assert stats["max_presentations"] == 2
    assert stats["reuse_detected"] == 0


def test_concurrent_presentations_exactly_one_succeeds(provider: ProviderHandle) -> None:
    delay = 0.3
    provider.set_faults(refresh_delay=delay)
    token = provider.issue(expires_in=60)
    barrier = threading.Barrier(16)
    replies: list[requests.Response] = []

    def present() -> None:
        barrier.wait()
        replies.append(provider.refresh(token["refresh_token"]))

    threads = [threading.Thread(target=present) for _ in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started

    codes = sorted(reply.status_code for reply in replies)
    assert codes == [200] + [400] * 15
    assert all(r.json()["error"] == "invalid_grant" for r in replies if r.status_code == 400)
    assert elapsed < 8 * delay  # overlapped inside the grant (in series: 16 * delay)
    stats = provider.stats()
    assert stats["refreshes"] == 1
    assert stats["max_presentations"] == stats["max_consume_attempts"] == 16
    assert stats["reuse_detected"] == 15
    assert stats["families_revoked"] == 1
    # The reuses revoked the family while the winner was still working: its tokens are dead too.
    winner = next(r for r in replies if r.status_code == 200).json()
    assert provider.userinfo(winner["access_token"]).status_code == 401


# --- faults ------------------------------------------------------------------------------------


def test_unavailable_before_does_not_consume(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    provider.set_faults(unavailable_before=1)
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    assert reply.json() == {"error": "temporarily_unavailable"}
    assert provider.refresh(token["refresh_token"]).status_code == 200  # fault used up

    stats = provider.stats()
    fp = fingerprint(token["refresh_token"])
    assert stats["presentations"][fp] == 2
    assert stats["consume_attempts"][fp] == 1
    assert stats["refreshes"] == 1
    assert stats["faults_fired"] == {"unavailable_before": 1}


def test_invalid_client_does_not_consume(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    provider.set_faults(invalid_client=True)
    for _ in range(2):
        reply = provider.refresh(token["refresh_token"])
        assert reply.status_code == 401
        assert reply.json() == {"error": "invalid_client"}
    provider.clear_faults()
    assert provider.refresh(token["refresh_token"]).status_code == 200
    assert provider.stats()["faults_fired"] == {"invalid_client": 2}


def test_status_before_consuming(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    provider.set_faults(
        status=1, status_code=429, status_body={"error": "slow_down"}, status_retry_after=1
    )
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 429
    assert reply.json() == {"error": "slow_down"}
    assert reply.headers["Retry-After"] == "1"
    assert provider.refresh(token["refresh_token"]).status_code == 200


def test_status_after_consuming(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    provider.set_faults(status=1, status_code=504, status_after_consume=True)
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 504
    assert reply.headers["Content-Type"].startswith("text/html")
    assert provider.stats()["refreshes"] == 1
    assert provider.refresh(token["refresh_token"]).status_code == 400  # it was rotated


def test_garbage_after_consuming(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    provider.set_faults(garbage=2)
    for _ in range(2):
        token = provider.issue(expires_in=60)
        reply = provider.refresh(token["refresh_token"])
        assert reply.status_code == 200
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "access_token" not in reply.text
    token = provider.issue(expires_in=60)
    assert "access_token" in provider.refresh(token["refresh_token"]).json()
    assert provider.stats()["refreshes"] == 3


def test_hang_after_consuming(provider: ProviderHandle) -> None:
    provider.set_faults(hang=1, hang_seconds=0.5)
    token = provider.issue(expires_in=60)
    with pytest.raises(requests.ReadTimeout):
        provider.refresh(token["refresh_token"], timeout=0.2)
    assert provider.stats()["refreshes"] == 1  # committed before the sleep

    provider.set_faults(hang=1, hang_seconds=0.3)
    token = provider.issue(expires_in=60)
    started = time.monotonic()
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200
    assert time.monotonic() - started >= 0.3


def test_drop_after_commit(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    provider.set_faults(drop_after_commit=1)
    with pytest.raises(requests.ConnectionError) as caught:
        provider.refresh(token["refresh_token"])
    cause = caught.value.args[0]
    assert isinstance(cause, urllib3.exceptions.ProtocolError)
    assert isinstance(cause.args[1], (http.client.RemoteDisconnected, ConnectionResetError))

    # The refresh was committed: the token rotated although the client saw nothing.
    stats = provider.stats()
    assert stats["refreshes"] == 1
    assert len(provider.issued()["refresh_tokens"]) == 2
    assert provider.refresh(token["refresh_token"]).status_code == 400
    assert provider.stats()["reuse_detected"] == 1


# --- admin API, logging, runners ---------------------------------------------------------------


def test_admin_issue_expired_token(provider: ProviderHandle) -> None:
    token = provider.issue(sub="carol")
    assert token["expires_in"] == 0
    assert token["expires_at"] <= time.time()
    assert provider.userinfo(token["access_token"]).status_code == 401  # expired
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200
    assert provider.userinfo(reply.json()["access_token"]).json()["sub"] == "carol"
    stats = provider.stats()
    assert stats["admin_issued"] == 1
    assert stats["code_exchanges"] == 0


def test_admin_faults_reset_and_revoke(provider: ProviderHandle) -> None:
    state = provider.set_faults(garbage=3, refresh_delay=0.1)
    assert state["faults"] == {"garbage": 3}
    assert state["settings"]["refresh_delay"] == 0.1
    assert requests.get(f"{provider.url}/_admin/faults", timeout=5).json() == state

    for bad in ({"nonsense": 1}, {"garbage": "often"}, {"rotate": "yes"}):
        reply = requests.post(f"{provider.url}/_admin/faults", json=bad, timeout=5)
        assert reply.status_code == 400
        assert reply.json()["error"] == "invalid_request"
    reply = requests.post(f"{provider.url}/_admin/issue", json={"client_id": "x"}, timeout=5)
    assert reply.status_code == 400

    token = provider.issue(expires_in=60)
    provider.reset()
    stats = provider.stats()
    assert stats["faults"] == {}
    assert stats["admin_issued"] == 0
    assert stats["settings"]["refresh_delay"] == 0.0
    assert provider.issued_tokens() == []
    assert provider.userinfo(token["access_token"]).status_code == 200  # tokens survive a reset

    provider.revoke(token["refresh_token"])
    assert provider.userinfo(token["access_token"]).status_code == 401
    assert provider.stats()["families_revoked"] == 1

    token = provider.issue(expires_in=60)
    provider.reset(drop_tokens=True)
    assert provider.userinfo(token["access_token"]).status_code == 401


def test_userinfo_rejects_missing_or_unknown_tokens(provider: ProviderHandle) -> None:
    assert requests.get(provider.userinfo_url, timeout=5).status_code == 401
    assert provider.userinfo("not-a-token").status_code == 401


def test_no_token_in_any_log_line(
    provider: ProviderHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = provider.login()
    new = provider.refresh(token["refresh_token"]).json()
    provider.refresh(token["refresh_token"])  # a reuse: logged, by fingerprint only
    assert caplog.records  # Authlib and urllib3 did log at DEBUG
    for value in [*provider.issued_tokens(), provider.client_secret]:
        assert value not in caplog.text
    assert new["refresh_token"] not in caplog.text


def test_provider_server_runs_dedicated_configs(make_provider: Any) -> None:
    strict = make_provider(access_ttl=1, client_id="app", client_secret="s3cret")
    assert strict.client_id == "app"
    token = strict.login()
    assert token["expires_in"] == 1
    assert strict.refresh(token["refresh_token"]).status_code == 200
    with ProviderServer() as server:
        url = server.url
        assert requests.get(f"{url}/_admin/stats", timeout=5).json()["refreshes"] == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/_admin/stats", timeout=5)


def test_command_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "flask_tokenguard.demo_provider", "--port", "0"]
    command += ["--access-ttl", "7", "--client-id", "cli-client"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            first = process.stdout.readline()
            if not first:  # it died: show why
                pytest.fail(process.communicate(timeout=10)[1])
            assert first.startswith("demo OAuth provider on http://127.0.0.1:"), first
            url = first.split()[-1]
            handle_like = requests.post(
                f"{url}/_admin/issue", json={"client_id": "cli-client"}, timeout=5
            )
            assert handle_like.json()["expires_in"] == 7
        finally:
            process.terminate()
            process.communicate(timeout=10)


# --- safe by default --------------------------------------------------------------------------


def test_testing_package_needs_the_demo_extra() -> None:
    """Without Authlib, importing the provider names the extra to install."""
    for statement in (
        "from flask_tokenguard.testing import ProviderServer",
        "import flask_tokenguard.demo_provider",
    ):
        code = (
            "import sys; sys.modules['authlib'] = None\n"
            "import flask_tokenguard  # the extension itself does not need it\n"
            "from flask_tokenguard.testing import TokenGuardClient, ProviderHandle  # nor these\n"
            f"{statement}\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError: "), done.stderr
        assert 'pip install "flask-tokenguard[demo]"' in last


def test_old_import_path_still_works() -> None:
    from flask_tokenguard import demo_provider, testing

    for name in ("FAULTS", "ProviderConfig", "ProviderServer", "ProviderState", "fingerprint"):
        assert getattr(demo_provider, name) is getattr(testing, name)
    assert testing.ProviderHandle.__module__ == "flask_tokenguard.testing.handle"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "provider.example"])
def test_a_non_loopback_host_is_refused(host: str) -> None:
    with pytest.raises(UnsafeHostError, match="unsafe_expose=True"):
        ProviderServer(host=host)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_need_no_flag(host: str) -> None:
    ProviderServer(host=host)  # not started: building it is where the check is


def test_exposing_needs_the_flag_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        server = ProviderServer(host="192.0.2.10", unsafe_expose=True)  # not started
    assert "beyond this machine" in caplog.text
    assert "192.0.2.10" in server.app.config["TRUSTED_HOSTS"]
    # Exposing never turns on plain HTTP by itself.
    assert "AUTHLIB_INSECURE_TRANSPORT" not in os.environ


class _FakeServer:
    """Stands in for ProviderServer in the command-line tests (nothing listens)."""

    made: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: Any, **kwargs: Any) -> None:
        self.config = config
        self.url = f"http://{kwargs['host']}:5001"
        self.made.append({**kwargs, "config": config})

    def start(self) -> _FakeServer:
        return self

    def stop(self) -> None:
        pass


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    monkeypatch.setattr(cli, "ProviderServer", _FakeServer)
    monkeypatch.setattr(cli, "_wait_for_interrupt", lambda: None)
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "")  # restored (to unset) afterwards
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT")
    _FakeServer.made = []
    return _FakeServer.made


def test_command_line_refuses_a_non_loopback_host(
    fake_cli: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--host", "0.0.0.0"])
    assert exit_info.value.code == 2
    assert "--unsafe-expose-demo-provider" in capsys.readouterr().err
    assert fake_cli == []
    assert "AUTHLIB_INSECURE_TRANSPORT" not in os.environ


def test_command_line_on_loopback_keeps_transport_strict(
    fake_cli: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--host", "localhost"]) == 0
    assert fake_cli[0]["host"] == "localhost"
    assert "AUTHLIB_INSECURE_TRANSPORT" not in os.environ
    assert "WARNING" not in capsys.readouterr().err


def test_command_line_exposes_with_the_flag_loudly(
    fake_cli: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--host", "0.0.0.0", "--unsafe-expose-demo-provider"]
    assert cli.main([*argv, "--trusted-host", "provider.lan"]) == 0
    assert fake_cli[0]["unsafe_expose"] is True
    assert fake_cli[0]["trusted_hosts"] == ["provider.lan"]
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "AUTHLIB_INSECURE_TRANSPORT=1" in err
    assert os.environ["AUTHLIB_INSECURE_TRANSPORT"] == "1"


def test_command_line_logout_flags(
    fake_cli: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--backchannel-logout-uri", "http://127.0.0.1:5000/backchannel-logout"]
    argv += ["--post-logout-redirect-uri", "https://app.example/bye"]
    argv += ["--post-logout-redirect-uri", "http://127.0.0.1:5000/"]
    assert cli.main(argv) == 0
    config = fake_cli[0]["config"]
    assert config.backchannel_logout_uri == "http://127.0.0.1:5000/backchannel-logout"
    assert config.post_logout_redirect_uris == ("https://app.example/bye", "http://127.0.0.1:5000/")
    out = capsys.readouterr().out
    assert "/.well-known/openid-configuration" in out
    assert "back-channel logout to: http://127.0.0.1:5000/backchannel-logout" in out

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--backchannel-logout-uri", "https://rp.example/logout"])
    assert exit_info.value.code == 2
    assert "loopback" in capsys.readouterr().err


@pytest.mark.parametrize("peer", ["203.0.113.7", "10.0.0.2", "::ffff:192.0.2.1", "2001:db8::1"])
def test_admin_api_refuses_non_loopback_peers(peer: str) -> None:
    app = create_provider_app()
    client = app.test_client()
    environ = {"REMOTE_ADDR": peer}
    for method, path in [
        ("GET", "/_admin/stats"),
        ("GET", "/_admin/issued"),
        ("POST", "/_admin/faults"),
        ("POST", "/_admin/reset"),
        ("POST", "/_admin/issue"),
        ("POST", "/_admin/revoke"),
        ("POST", "/_admin/logout"),
        ("POST", "/_admin/keys/rotate"),
    ]:
        reply = client.open(path, method=method, json={}, environ_overrides=environ)
        assert reply.status_code == 403, (path, reply.text)
        assert reply.json == {
            "error": "access_denied",
            "error_description": "the admin API answers loopback clients only",
        }
    assert get_provider_state(app).stats()["admin_issued"] == 0
    # The OAuth endpoints themselves answer anyone who reaches them.
    metadata = "/.well-known/oauth-authorization-server"
    assert client.get(metadata, environ_overrides=environ).status_code == 200


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.9", "::1", "::ffff:127.0.0.1"])
def test_admin_api_answers_loopback_peers(peer: str) -> None:
    client = create_provider_app().test_client()
    reply = client.post("/_admin/issue", json={}, environ_overrides={"REMOTE_ADDR": peer})
    assert reply.status_code == 200, reply.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1.evil.example"])
def test_a_foreign_host_header_gets_400(provider: ProviderHandle, host: str) -> None:
    """A DNS rebinding page reaches 127.0.0.1 with its own name in the Host header."""
    for method, path in [
        ("GET", "/.well-known/oauth-authorization-server"),
        ("POST", "/_admin/issue"),
        ("GET", "/_admin/issued"),
        ("POST", "/token"),
    ]:
        reply = requests.request(
            method, f"{provider.url}{path}", headers={"Host": host}, json={}, timeout=5
        )
        assert reply.status_code == 400, (path, reply.status_code)
    assert provider.stats()["admin_issued"] == 0


def test_the_served_host_names_are_trusted(provider: ProviderHandle) -> None:
    port = urlsplit(provider.url).port
    path = "/.well-known/oauth-authorization-server"
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        reply = requests.get(f"{provider.url}{path}", headers={"Host": host}, timeout=5)
        assert reply.status_code == 200, host
    named = create_provider_app(trusted_hosts=["provider.test"]).test_client()
    assert named.get(path, headers={"Host": "provider.test:5001"}).status_code == 200
    assert named.get(path, headers={"Host": "other.test"}).status_code == 400


@pytest.mark.parametrize(
    ("host", "status"),
    [("[::1]:5001", 200), ("[::1]", 200), ("[::2]:5001", 400), ("[::1]x", 400)],
)
def test_bracketed_ipv6_hosts(host: str, status: int) -> None:
    """A provider on ::1 answers to ``[::1]:port`` (werkzeug's own check matches no IPv6)."""
    client = create_provider_app().test_client()
    path = "/.well-known/oauth-authorization-server"
    assert client.get(path, headers={"Host": host}).status_code == status


def test_admin_posts_need_a_json_body(provider: ProviderHandle) -> None:
    """What a web page may send to 127.0.0.1 without a CORS preflight is refused."""
    for path in ("reset", "issue", "faults", "revoke", "logout", "keys/rotate"):
        for body in ({"data": "x=1"}, {"data": "{}", "headers": {"Content-Type": "text/plain"}}):
            reply = requests.post(f"{provider.url}/_admin/{path}", timeout=5, **body)
            assert reply.status_code == 415, (path, reply.text)
    assert provider.stats()["admin_issued"] == 0
