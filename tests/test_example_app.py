"""The example app as people run it: ``python example_app.py`` in a subprocess, over HTTP.

Also: under gunicorn (``import example_app; example_app.app``) a missing required variable
stops the start with its name, and neither session store ever unpickles what it reads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import struct
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

from .fixtures.servers import free_port
from .fixtures.services import stop_process

ROOT = Path(__file__).resolve().parent.parent
SESSION_PREFIX = "tokenguard-example:session:"  # example_app.DEFAULTS
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


def canary_pickle(canary: Path) -> bytes:
    """A pickle that creates ``canary`` when loaded."""

    class Canary:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(canary), "w"))

    return pickle.dumps(Canary())


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
        "import threading, example_app\n"
        "assert 'app' not in vars(example_app)\n"
        "app = example_app.app\n"
        "assert example_app.app is app\n"
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


# -- sessions never unpickle ----------------------------------------------------------------------


def test_file_sessions_are_json_and_never_unpickled(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    canary = tmp_path / "canary"
    with run_example(instance) as example, requests.Session() as http:
        log_in(http, example)
        sid = http.cookies["session"]
        stored = (
            instance / "sessions" / hashlib.sha256(f"{SESSION_PREFIX}{sid}".encode()).hexdigest()
        )
        assert json.loads(stored.read_bytes()[4:])  # after cachelib's 4-byte expiry: JSON

        forged = "forged-session-id"
        path = (
            instance / "sessions" / hashlib.sha256(f"{SESSION_PREFIX}{forged}".encode()).hexdigest()
        )
        path.write_bytes(struct.pack("I", 0) + canary_pickle(canary))
        for route in ("/", "/api/status", "/api/profile"):
            reply = requests.get(example.url + route, cookies={"session": forged}, timeout=10)
            assert reply.status_code in (200, 401), (route, reply.status_code, reply.text)
        assert not canary.exists()
        assert "Traceback" not in example.output()


def test_redis_sessions_live_in_redis_and_are_never_unpickled(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    import redis

    canary = tmp_path / "canary"
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    env = {
        "FLASK_TOKENGUARD_CACHE_URL": redis_url,
        "FLASK_TOKENGUARD_KEY_PREFIX": redis_prefix + "tokenguard",
        "FLASK_SESSION_KEY_PREFIX": redis_prefix + "session:",
    }
    try:
        with run_example(tmp_path / "instance", **env) as example, requests.Session() as http:
            log_in(http, example)
            assert http.get(example.url + "/api/profile").status_code == 200
            sid = http.cookies["session"]
            assert client.exists(f"{redis_prefix}session:{sid}")
            assert not (tmp_path / "instance" / "sessions").exists()

            for forged, payload in (
                ("forged-pickle", canary_pickle(canary)),
                ("forged-cachelib-pickle", b"!" + canary_pickle(canary)),
                ("forged-json-list", b"[1, 2]"),
            ):
                client.set(f"{redis_prefix}session:{forged}", payload, ex=60)
                for route in ("/", "/api/status", "/api/profile"):
                    reply = requests.get(
                        example.url + route, cookies={"session": forged}, timeout=10
                    )
                    assert reply.status_code in (200, 401), (forged, route, reply.text)
            assert not canary.exists()
            assert "Traceback" not in example.output()
    finally:
        client.close()
