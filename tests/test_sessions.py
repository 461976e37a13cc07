"""flask_tokenguard.sessions: Flask-Session set up so that no session is ever unpickled.

A tiny app and Flask's test client: sessions round-trip in files (JSON) and in Redis
(msgpack); a pickle with a side effect written into either store is never loaded, and the
request that presents it gets a new, empty session.

docs/design.md, "Sealing and key names" (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, session

from flask_tokenguard import ConfigurationError
from flask_tokenguard.sessions import init_sessions

COOKIE = "session"
USER = {"user": "alice", "numbers": [1, 2, 3]}


def canary_pickle(canary: Path) -> bytes:
    """A pickle that creates ``canary`` when loaded."""

    class Canary:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(canary), "w"))

    return pickle.dumps(Canary())


def make_app(instance: Path) -> Flask:
    app = Flask(__name__, instance_path=str(instance))
    app.config["SECRET_KEY"] = "test-secret"

    @app.get("/")
    def show() -> dict[str, Any]:
        # Flask-Session marks every session permanent (SESSION_PERMANENT): leave that out.
        data = {k: v for k, v in session.items() if k != "_permanent"}
        return {"session": data, "sid": session.sid}  # type: ignore[attr-defined]

    @app.post("/")
    def write() -> dict[str, Any]:
        session["user"] = "alice"
        session["numbers"] = [1, 2, 3]
        return {"sid": session.sid}  # type: ignore[attr-defined]

    return app


def sign_in(app: Flask) -> str:
    """One request that writes a session; its session id (the cookie's value)."""
    client = app.test_client()
    client.post("/")
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    return cookie.value


def present(app: Flask, sid: str) -> dict[str, Any]:
    """A request with the session cookie ``sid``; what the view saw."""
    client = app.test_client()
    client.set_cookie(COOKIE, sid)
    reply = client.get("/")
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.get_json()
    return data


def assert_new_empty_session(seen: dict[str, Any], forged: str) -> None:
    assert seen["session"] == {}
    assert seen["sid"] != forged


# -- files ----------------------------------------------------------------------------------------


def session_file(directory: Path, prefix: str, sid: str) -> Path:
    """cachelib's FileSystemCache names a file after the hash of its key (prefix + sid)."""
    return directory / hashlib.sha256(f"{prefix}{sid}".encode()).hexdigest()


def test_file_sessions_are_json_files_only_their_owner_reads(tmp_path: Path) -> None:
    app = make_app(tmp_path / "instance")
    init_sessions(app, key_prefix="app:")
    sid = sign_in(app)

    directory = tmp_path / "instance" / "sessions"
    assert directory.stat().st_mode & 0o777 == 0o700
    stored = session_file(directory, "app:", sid)
    assert stored.stat().st_mode & 0o777 == 0o600
    data = stored.read_bytes()
    assert json.loads(data[4:]) == {**USER, "_permanent": True}  # after the 4-byte expiry
    assert [p.name for p in directory.iterdir()] == [stored.name]  # no file-count entry

    assert present(app, sid) == {"sid": sid, "session": USER}


def test_a_directory_of_ones_own(tmp_path: Path) -> None:
    app = make_app(tmp_path / "instance")
    init_sessions(app, directory=tmp_path / "elsewhere")
    sid = sign_in(app)
    assert session_file(tmp_path / "elsewhere", "session:", sid).exists()  # Flask-Session's prefix
    assert not (tmp_path / "instance").exists()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("pickle", id="pickle"),
        pytest.param(b"[1, 2]", id="json-list"),
        pytest.param(b"\xff\xfe not utf-8", id="bytes"),
    ],
)
def test_file_sessions_never_unpickle(tmp_path: Path, payload: str | bytes) -> None:
    canary = tmp_path / "canary"
    app = make_app(tmp_path / "instance")
    init_sessions(app)
    forged = "forged-session-id"
    body = canary_pickle(canary) if payload == "pickle" else payload
    assert isinstance(body, bytes)
    path = session_file(tmp_path / "instance" / "sessions", "session:", forged)
    path.write_bytes(struct.pack("I", 0) + body)  # expiry 0: never expires

    assert_new_empty_session(present(app, forged), forged)
    assert not canary.exists()


# -- Redis ----------------------------------------------------------------------------------------


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


def test_redis_sessions_are_msgpack_in_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    import msgspec

    app = make_app(tmp_path / "instance")
    init_sessions(app, redis_url, key_prefix=redis_prefix + "session:")
    sid = sign_in(app)

    stored = redis_client.get(f"{redis_prefix}session:{sid}")
    assert msgspec.msgpack.decode(stored) == {**USER, "_permanent": True}
    assert redis_client.ttl(f"{redis_prefix}session:{sid}") > 0
    assert present(app, sid)["session"] == USER
    assert not (tmp_path / "instance").exists()  # nothing on disk


def test_redis_sessions_never_unpickle(
    tmp_path: Path, redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    canary = tmp_path / "canary"
    app = make_app(tmp_path / "instance")
    init_sessions(app, redis_url, key_prefix=redis_prefix + "session:")
    for forged, payload in (
        ("forged-pickle", canary_pickle(canary)),  # Flask-Session's own fallback
        ("forged-cachelib-pickle", b"!" + canary_pickle(canary)),  # cachelib's Redis format
        ("forged-json-object", b'{"user": "mallory"}'),  # Flask-Session's JSON fallback
        ("forged-msgpack-list", b"\x92\x01\x02"),
    ):
        redis_client.set(f"{redis_prefix}session:{forged}", payload, ex=60)
        assert_new_empty_session(present(app, forged), forged)
    assert not canary.exists()


# -- misuse and missing dependencies --------------------------------------------------------------


@pytest.mark.parametrize("url", ["memcached://127.0.0.1:11211", "file:///tmp/x", "simple://"])
def test_other_urls_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="redis://"):
        init_sessions(make_app(tmp_path), url)


def test_a_url_and_a_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        init_sessions(make_app(tmp_path), "redis://127.0.0.1:6379/0", directory=tmp_path)


def test_without_flask_session_the_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['flask_session'] = None  # as if it were not installed\n"
        "try:\n"
        "    import flask_tokenguard.sessions\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "flask-tokenguard[sessions]" in done.stdout, done.stdout + done.stderr


def test_a_value_json_cannot_encode_fails_the_write_and_leaves_no_file(tmp_path: Path) -> None:
    app = make_app(tmp_path / "instance")
    app.testing = True  # the error reaches the test instead of becoming a 500

    @app.get("/bytes")
    def store_bytes() -> str:
        session["raw"] = b"\x00"
        return "stored?"

    init_sessions(app)
    with pytest.raises(TypeError):
        app.test_client().get("/bytes")
    assert list((tmp_path / "instance" / "sessions").iterdir()) == []
