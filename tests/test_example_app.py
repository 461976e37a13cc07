"""The example app as people run it: ``python example_app.py`` in a subprocess, over HTTP.

Also: under gunicorn (``import example_app; example_app.app``) a missing required variable
stops the start with its name; the factory changes no environment variable (the entry points
allow loopback http for requests-oauthlib); sessions follow the cache URL; requests naming a
foreign host are refused. (The sessions' no-pickle guarantee: tests/test_sessions.py.)
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask import Flask

from .fixtures.servers import free_port
from .fixtures.services import stop_process

ROOT = Path(__file__).resolve().parent.parent
REQUIRED_ENV = (
    "FLASK_TOKENGUARD_TOKEN_URL",
    "FLASK_TOKENGUARD_AUTHORIZE_URL",
    "FLASK_EXAMPLE_API_URL",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without FLASK_* and OAUTHLIB_* (the test session sets the latter)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "OAUTHLIB_"))}
    env.update(extra)
    return env


@dataclass
class Example:
    url: str
    port: int
    instance: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def run_example(instance: Path, **env: str) -> Iterator[Example]:
    """``python example_app.py`` on a free port, with its instance folder in ``instance``."""
    port = free_port()
    log = instance.parent / f"example-{port}.log"
    environment = clean_env(
        PORT=str(port), EXAMPLE_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1", **env
    )
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "example_app.py"],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    example = Example(f"http://127.0.0.1:{port}", port, instance, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                pytest.fail(f"example_app.py exited with {proc.returncode}:\n{example.output()}")
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(example.url + "/api/provider-stats", timeout=2).ok:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"example_app.py did not answer in 20 s:\n{example.output()}")
            time.sleep(0.1)
        yield example
    finally:
        stop_process(proc)


def log_in(http: requests.Session, example: Example) -> None:
    """The browser's path: /login -> the provider's /authorize -> /callback -> /."""
    reply = http.get(example.url + "/login", allow_redirects=False)
    assert reply.status_code == 302, reply.text
    authorize = urlsplit(reply.headers["Location"])
    query = parse_qs(authorize.query)
    assert authorize.path == "/authorize"
    assert query["redirect_uri"] == [example.url + "/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"] and query["code_challenge"]
    reply = http.get(reply.headers["Location"], allow_redirects=False)  # auto-approves
    assert reply.status_code == 302, reply.text
    assert reply.headers["Location"].startswith(example.url + "/callback?")
    reply = http.get(reply.headers["Location"], allow_redirects=False)
    assert reply.status_code == 302, reply.text
    assert urlsplit(reply.headers["Location"]).path == "/"


# -- python example_app.py ------------------------------------------------------------------------


def test_serves_the_demo_and_logs_in_over_http(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    with run_example(instance) as example, requests.Session() as http:
        page = http.get(example.url + "/")
        assert page.status_code == 200
        assert 'id="login"' in page.text

        log_in(http, example)
        page = http.get(example.url + "/")
        assert "Signed in as <strong>Alice</strong>" in page.text

        reply = http.get(example.url + "/api/profile")
        assert reply.status_code == 200, reply.text
        assert reply.json()["profile"]["sub"] == "alice"
        me = http.get(example.url + "/api/me").json()  # from the validated ID token
        assert me["sub"] == "alice" and me["claims"]["name"] == "Alice"
        # requests-oauthlib, on plain http to the local provider: allowed by the entry point.
        reply = http.get(example.url + "/api/profile-naive")
        assert reply.status_code == 200, reply.text
        assert reply.json()["profile"]["sub"] == "alice"

        status = http.get(example.url + "/api/status").json()
        assert status["logged_in"] is True
        assert status["expires_at"] > time.time()
        assert status["provider"]["code_exchanges"] == 1

        reply = http.get(example.url + "/logout", allow_redirects=False)
        assert reply.status_code == 302
        assert urlsplit(reply.headers["Location"]).path == "/"
        reply = http.get(example.url + "/api/profile")
        assert reply.status_code == 401
        assert reply.json()["error"]
        assert http.get(example.url + "/api/profile-naive").status_code == 401
        reply = http.get(example.url + "/api/me")
        assert reply.status_code == 401 and reply.json()["error"]

        # DNS rebinding: a request naming another host is refused.
        reply = requests.get(example.url + "/", headers={"Host": "attacker.example"}, timeout=10)
        assert reply.status_code == 400
        reply = requests.get(example.url + "/", headers={"Host": f"localhost:{example.port}"})
        assert reply.status_code == 200

    # No configuration: a secret key of its own, readable by this user only, and file stores.
    key = instance / "secret_key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert len(key.read_text().strip()) >= 32
    assert (instance / "sessions").is_dir()
    assert (instance / "tokenguard-store").is_dir()


def test_no_page_or_status_reveals_a_token(tmp_path: Path) -> None:
    with run_example(tmp_path / "instance") as example, requests.Session() as http:
        log_in(http, example)
        stats_url = http.get(example.url + "/api/status").json()["api_url"]
        provider = stats_url.rsplit("/", 1)[0]
        issued = requests.get(provider + "/_admin/issued", timeout=5).json()
        tokens = issued["access_tokens"] + issued["refresh_tokens"]
        assert tokens
        for path in ("/", "/api/status", "/api/profile", "/api/provider-stats"):
            body = http.get(example.url + path).text
            assert not [t for t in tokens if t in body], path
        for file in (tmp_path / "instance").rglob("*"):
            if file.is_file():
                data = file.read_bytes()
                assert not [t for t in tokens if t.encode() in data], file


# -- gunicorn example_app:app ---------------------------------------------------------------------


@pytest.mark.parametrize("missing", REQUIRED_ENV)
def test_under_gunicorn_a_missing_variable_is_named(tmp_path: Path, missing: str) -> None:
    env = clean_env(EXAMPLE_INSTANCE_PATH=str(tmp_path))
    env.update({name: "http://127.0.0.1:9/x" for name in REQUIRED_ENV if name != missing})
    done = subprocess.run(
        [sys.executable, "-c", "import example_app; example_app.app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "ConfigurationError" in last and missing in last, done.stderr
    assert [name for name in REQUIRED_ENV if name in last] == [missing]


def test_gunicorn_refuses_to_start_without_the_variables(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--check-config", "example_app:app"],
        cwd=ROOT,
        env=clean_env(EXAMPLE_INSTANCE_PATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    for name in REQUIRED_ENV:
        assert name in done.stderr + done.stdout


def test_importing_builds_nothing_and_starts_no_provider(tmp_path: Path) -> None:
    """Import is free; ``app`` is built from the environment, without a provider of its own."""
    code = (
        "import os, threading, example_app\n"
        "assert 'app' not in vars(example_app)\n"
        "example_app.create_app()\n"
        "assert 'OAUTHLIB_INSECURE_TRANSPORT' not in os.environ  # not the factory's business\n"
        "app = example_app.app\n"
        "assert example_app.app is app\n"
        "assert os.environ['OAUTHLIB_INSECURE_TRANSPORT'] == '1'  # loopback http: naive route\n"
        "assert not [t for t in threading.enumerate() if t.name.startswith('demo-provider')]\n"
        "print(sorted(r.rule for r in app.url_map.iter_rules()))\n"
    )
    env = clean_env(EXAMPLE_INSTANCE_PATH=str(tmp_path))
    env.update({name: "http://127.0.0.1:9/x" for name in REQUIRED_ENV})
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    for rule in ("/", "/login", "/callback", "/logout", "/api/profile", "/api/profile-naive"):
        assert f"'{rule}'" in done.stdout


# -- in this process: create_app ----------------------------------------------------------------


def build(tmp_path: Path, **config: Any) -> Flask:
    """``create_app`` with the required URLs (nothing listens there) and no provider counters."""
    import example_app

    settings = {
        "TOKENGUARD_TOKEN_URL": "http://127.0.0.1:9/token",
        "TOKENGUARD_AUTHORIZE_URL": "http://127.0.0.1:9/authorize",
        "EXAMPLE_API_URL": "http://127.0.0.1:9/userinfo",
        "EXAMPLE_PROVIDER_STATS_URL": "",
        **config,
    }
    return example_app.create_app(settings, instance_path=str(tmp_path / "instance"))


def test_the_factory_changes_no_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    before = dict(os.environ)
    app = build(tmp_path)
    assert dict(os.environ) == before
    assert app.config["TOKENGUARD_ALLOW_INSECURE_LOOPBACK"] is True


@pytest.mark.parametrize(
    ("token_url", "api_url", "allow", "allowed"),
    [
        ("http://127.0.0.1:5001/token", "http://localhost:5001/userinfo", True, True),
        ("http://[::1]:5001/token", "https://api.example.com/me", True, True),
        ("https://id.example.com/token", "https://api.example.com/me", True, False),
        ("http://id.example.com/token", "http://127.0.0.1:5001/userinfo", True, False),
        ("http://127.0.0.1:5001/token", "http://api.example.com/me", True, False),
        ("http://127.0.0.1:5001/token", "http://127.0.0.1:5001/userinfo", False, False),
    ],
)
def test_plain_http_is_allowed_for_requests_oauthlib_only_on_this_host(
    monkeypatch: pytest.MonkeyPatch, token_url: str, api_url: str, allow: bool, allowed: bool
) -> None:
    import example_naive

    monkeypatch.delenv("OAUTHLIB_INSECURE_TRANSPORT", raising=False)
    config = {
        "TOKENGUARD_TOKEN_URL": token_url,
        "EXAMPLE_API_URL": api_url,
        "TOKENGUARD_ALLOW_INSECURE_LOOPBACK": allow,
    }
    assert example_naive.allow_loopback_http(config) is allowed
    assert ("OAUTHLIB_INSECURE_TRANSPORT" in os.environ) is allowed


def test_a_foreign_host_header_is_refused(tmp_path: Path) -> None:
    client = build(tmp_path).test_client()
    for host in ("127.0.0.1:5000", "localhost:5000", "localhost"):
        assert client.get("/api/provider-stats", headers={"Host": host}).status_code == 200
    for host in ("attacker.example", "127.0.0.1.attacker.example:5000", "localhost.:5000"):
        assert client.get("/api/provider-stats", headers={"Host": host}).status_code == 400


def test_trusted_hosts_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLASK_TRUSTED_HOSTS", '["app.example.com", ".example.org"]')
    client = build(tmp_path).test_client()
    for host in ("app.example.com", "www.example.org:443"):
        assert client.get("/api/provider-stats", headers={"Host": host}).status_code == 200
    assert client.get("/api/provider-stats", headers={"Host": "127.0.0.1"}).status_code == 400


def test_sessions_follow_the_cache_url(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    from flask_tokenguard.sessions import JSONObjectSerializer, MsgpackOnly

    files = build(tmp_path / "files")
    assert files.config["SESSION_CACHELIB"].serializer.__class__ is JSONObjectSerializer
    assert (tmp_path / "files" / "instance" / "sessions").is_dir()

    in_redis = build(
        tmp_path / "redis",
        TOKENGUARD_CACHE_URL=redis_url,
        TOKENGUARD_KEY_PREFIX=redis_prefix + "tokenguard",
        SESSION_KEY_PREFIX=redis_prefix + "session:",
    )
    assert isinstance(in_redis.session_interface.serializer, MsgpackOnly)  # type: ignore[attr-defined]
    assert not (tmp_path / "redis" / "instance" / "sessions").exists()
    client = in_redis.test_client()
    with client.session_transaction() as session:
        session["example"] = "in redis"
    sid = client.get_cookie("session")
    assert sid is not None

    import redis

    with redis.Redis.from_url(redis_url) as r:
        assert r.exists(f"{redis_prefix}session:{sid.value}")
