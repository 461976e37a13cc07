"""Tokens are never in clear at rest, and nothing at rest is loaded with pickle.

docs/design.md, "Sealing and key names".

The session holds ``{"v", "exp", "due", "fp", "st", "box"}`` with the token sealed in ``box``
(AES-GCM, bound to the readable fields and to the session's ``<key>_sid``); the shared store
holds records sealed with their key name as associated data. These tests look at what really
lands in Redis, in files and in the browser's cookie, rotate the secrets, tamper with every
part, and capture every log record at DEBUG.

Leaks are reported by fingerprint (8 hex of the SHA-256), never by value.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from cachelib.file import FileSystemCache
from cachelib.serializers import JSONSerializer
from flask import Flask, jsonify, request, session
from flask.testing import FlaskClient
from flask_session import Session

from flask_tokenguard import TokenGuard, token_refreshed
from flask_tokenguard.demo_provider import fingerprint
from flask_tokenguard.errors import TokenError
from flask_tokenguard.keys import KeyNames
from flask_tokenguard.logs import install_redaction
from flask_tokenguard.records import RecordCodec
from flask_tokenguard.sealing import Sealer
from flask_tokenguard.session import SessionTokens
from flask_tokenguard.stores.files import FileStore

from .fixtures import apps
from .fixtures.apps import burst, new_client
from .fixtures.servers import serve

SESSION_STORAGE = {"TOKENGUARD_TOKEN_STORAGE": "session"}


def make_app(provider: Any, instance_path: str, **config: Any) -> Flask:
    """These tests look inside the session's record: tokens travel in the session."""
    return apps.make_app(provider, instance_path, **{**SESSION_STORAGE, **config})


@pytest.fixture
def guarded(guarded: Callable[..., str]) -> Callable[..., str]:
    return lambda *args, **config: guarded(*args, **{**SESSION_STORAGE, **config})


SESSION_KEY = "_tokenguard"
SESSION_KINDS = ("cookie", "redis", "files")


# -- helpers ---------------------------------------------------------------------------------


class JSONFileSystemCache(FileSystemCache):
    """cachelib's file cache with JSON in place of pickle (its item-count file included).

    In cachelib 0.17 ``serializer`` is a class attribute that ``__init__`` already uses (it
    writes the item count), so it is replaced on a subclass, not on the instance afterwards.
    ``JSONSerializer`` has the stream API (``dump``/``load``) the file cache calls, so nothing
    in the directory is a pickle.
    """

    serializer = JSONSerializer()


def secrets_of(provider: Any) -> list[str]:
    """Every value that must never be at rest in clear or in a log."""
    basic = base64.b64encode(f"{provider.client_id}:{provider.client_secret}".encode()).decode()
    return [*provider.issued_tokens(), provider.client_secret, basic]


def leaks(data: bytes | str, secrets: Iterable[str]) -> list[str]:
    """Fingerprints of the secrets found in ``data`` (a failure message must not leak them)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return [fingerprint(s) for s in secrets if s and s.encode() in raw]


def is_pickle(raw: bytes) -> bool:
    """A pickle (protocol 2+ starts with PROTO 0x80), or cachelib's Redis form ``!`` + pickle."""
    return raw[:1] == b"\x80" or (raw[:1] == b"!" and raw[1:2] == b"\x80")


def cookie_payload(value: str) -> str:
    """The session cookie's content as the browser holds it (itsdangerous ``[.]b64.ts.sig``)."""
    compressed = value.startswith(".")
    if compressed:
        value = value[1:]
    payload = value.split(".")[0]
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    if compressed:
        data = zlib.decompress(data)
    return data.decode("utf-8")


def flip(box: str) -> str:
    """``box`` with one bit of its ciphertext flipped (still a well-formed blob)."""
    body = box[len("tg1.") :]
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return "tg1." + base64.urlsafe_b64encode(bytes(raw)).decode("ascii").rstrip("=")


def opens_with(provider: Any, data: dict[str, Any], *secrets: str) -> bool:
    """Whether the token record in session ``data`` opens with exactly these secrets."""
    tokens = SessionTokens(
        SESSION_KEY, Sealer(secrets, "session"), KeyNames(provider.client_id, "unused"), 5.0
    )
    record = tokens.peek(data)
    assert record is not None
    try:
        tokens.open(dict(data), record)
    except TokenError:
        return False
    return True


def seeded(app: Flask, token: dict[str, Any]) -> FlaskClient:
    client = app.test_client()
    assert client.post("/_test/seed", json=token).status_code == 200
    return client


def session_of(client: FlaskClient) -> dict[str, Any]:
    with client.session_transaction() as sess:
        return dict(sess)


def edit_session(client: FlaskClient, edit: Callable[[dict[str, Any]], None]) -> None:
    with client.session_transaction() as sess:
        data = dict(sess)
        edit(data)
        sess.clear()
        sess.update(data)


def move_cookie(source: FlaskClient, target: FlaskClient) -> None:
    cookie = source.get_cookie("session")
    assert cookie is not None
    target.set_cookie("session", cookie.value)


def add_test_routes(app: Flask) -> None:
    """Views that hand the plain token out, and a raw writer for malformed session records."""
    guard: TokenGuard = app.extensions["tokenguard_guard"]

    @app.get("/_test/mine")
    @guard.token_required
    def mine() -> Any:
        return jsonify(guard.token)

    @app.post("/_test/raw")
    @guard.exempt
    def raw() -> Any:
        session[SESSION_KEY] = request.get_json()
        return jsonify(ok=True)


def _pwned() -> None:  # pragma: no cover - must never run
    _PWNED.append(True)


_PWNED: list[bool] = []


class _Boom:
    """Unpickling this calls :func:`_pwned`: proof that a pickle was loaded."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_pwned, ())


@pytest.fixture
def browser() -> Iterator[Callable[..., requests.Session]]:
    """``browser(base, token=None)``: an HTTP client with its own session cookie, closed after."""
    opened: list[requests.Session] = []

    def start(base: str, token: dict[str, Any] | None = None) -> requests.Session:
        http = new_client(base, token)
        opened.append(http)
        return http

    yield start
    for http in opened:
        http.close()


# -- session kinds ---------------------------------------------------------------------------


@pytest.fixture(params=SESSION_KINDS)
def session_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app_factory(
    session_kind: str, provider: Any, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., Flask]:
    """``make(**config)``: the test app with the session kind's storage (shared between apps
    made by one test, so a session can be carried from one app to the next)."""
    if session_kind == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")

    def make(**config: Any) -> Flask:
        if session_kind == "redis":
            app = make_app(
                provider,
                str(tmp_path / "instance"),
                session_redis=f"{url}|{prefix}session:",
                **config,
            )
        else:
            app = make_app(provider, str(tmp_path / "instance"), **config)
        if session_kind == "files":
            app.config.update(
                SESSION_TYPE="cachelib",
                SESSION_CACHELIB=JSONFileSystemCache(str(tmp_path / "sessions")),
                SESSION_SERIALIZATION_FORMAT="json",
                SESSION_PERMANENT=True,
            )
            Session(app)
        add_test_routes(app)
        return app

    return make


# -- what is at rest -------------------------------------------------------------------------


def redis_items(url: str, prefix: str) -> Iterator[tuple[bytes, list[bytes]]]:
    """Every key under ``prefix`` and the bytes it holds, whatever its type."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match=prefix + "*", count=500):
            kind = client.type(key)
            if kind == b"string":
                values = [client.get(key) or b""]
            elif kind == b"hash":
                values = [b for kv in client.hgetall(key).items() for b in kv]
            elif kind == b"list":
                values = client.lrange(key, 0, -1)
            elif kind == b"set":
                values = list(client.smembers(key))
            elif kind == b"zset":
                values = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
            else:
                values = [repr(client.dump(key)).encode()]
            yield key, values
    finally:
        client.close()


def burst_refresh_logout_and_failure(
    provider: Any, base: str, browser: Callable[..., requests.Session]
) -> None:
    """A rotation burst, an invalid_grant (failure record), a logout (tombstone)."""
    provider.set_faults(refresh_delay=0.2)
    http = browser(base, provider.issue(expires_in=0))
    assert burst(http, f"{base}/api/profile", 12).statuses == [200] * 12
    assert provider.stats()["max_presentations"] == 1
    dead = provider.issue("bob", expires_in=0)
    provider.revoke(dead["refresh_token"])
    assert browser(base, dead).get(f"{base}/api/profile", timeout=5).status_code == 401
    leaving = browser(base, provider.issue("carol", expires_in=3600))
    assert leaving.get(f"{base}/logout", timeout=5).status_code == 200
    assert provider.stats()["refreshes"] == 1


def test_the_redis_namespace_holds_no_token_and_no_pickle(
    provider, guarded, browser, redis_url, redis_prefix
):
    base = guarded(
        TOKENGUARD_CACHE_URL=redis_url,
        TOKENGUARD_KEY_PREFIX=redis_prefix + "tg",
        session_redis=f"{redis_url}|{redis_prefix}session:",
    )
    burst_refresh_logout_and_failure(provider, base, browser)

    secrets = secrets_of(provider)
    kinds: set[str] = set()
    sealed_sessions = 0
    for key, values in redis_items(redis_url, redis_prefix):
        name = key.decode()
        assert not leaks(key, secrets), name
        parts = name[len(redis_prefix) :].split(":")
        kind = parts[1] if parts[0] == "tg" else parts[0]
        kinds.add(kind + (":sent" if name.endswith(":sent") else ""))
        for value in values:
            assert not leaks(value, secrets), f"{name} holds {leaks(value, secrets)}"
            assert not is_pickle(value), f"{name} holds a pickle"
            text = value.decode("utf-8")  # text only: JSON, a sealed blob, or a claim's owner
            if kind == "session":
                record = json.loads(text).get(SESSION_KEY)
                if record is not None:
                    assert record["box"].startswith("tg1.")
                    sealed_sessions += 1
            elif kind in ("result", "revoked") and not name.endswith(":sent"):
                assert text.startswith("tg1."), name
    # The scan saw the real thing: sessions, published results, a tombstone, a "sent" mark.
    assert {"session", "result", "revoked", "claim:sent"} <= kinds, kinds
    assert sealed_sessions >= 1


def test_the_file_store_and_file_sessions_hold_no_token_and_no_pickle(provider, tmp_path, browser):
    store_dir = tmp_path / "store"
    sessions_dir = tmp_path / "sessions"
    app = make_app(provider, str(tmp_path / "instance"), TOKENGUARD_CACHE_URL=f"file://{store_dir}")
    app.config.update(
        SESSION_TYPE="cachelib",
        SESSION_CACHELIB=JSONFileSystemCache(str(sessions_dir)),
        SESSION_SERIALIZATION_FORMAT="json",
        SESSION_PERMANENT=True,
    )
    Session(app)
    with serve(app) as base:
        burst_refresh_logout_and_failure(provider, base, browser)

    secrets = secrets_of(provider)
    values = 0
    for path in sorted(p for p in store_dir.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        assert not leaks(path.name, secrets), path.name
        assert not leaks(raw, secrets), f"{path.name} holds {leaks(raw, secrets)}"
        assert not is_pickle(raw), f"{path.name} is a pickle"
        if raw and "." not in path.name and path.parent == store_dir:
            assert json.loads(raw)["value"].startswith("tg1."), path.name
            values += 1
    assert values >= 3  # results of the refresh and the invalid_grant, the logout's tombstone

    sessions = 0
    for path in sorted(p for p in sessions_dir.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        assert not leaks(raw, secrets), f"session file holds {leaks(raw, secrets)}"
        # cachelib's file format: a 4-byte expiry, then the serializer's output.
        assert not is_pickle(raw) and not is_pickle(raw[4:]), "a session file is a pickle"
        data = json.loads(raw[4:])
        if isinstance(data, dict) and data.get(SESSION_KEY):
            assert data[SESSION_KEY]["box"].startswith("tg1.")
            sessions += 1
    assert sessions >= 1


def test_the_session_cookie_as_the_browser_holds_it_has_no_token(provider, guarded, browser):
    base = guarded()
    provider.set_faults(refresh_delay=0.2)
    http = browser(base, provider.issue(expires_in=0))
    result = burst(http, f"{base}/api/profile", 8)
    assert result.statuses == [200] * 8

    secrets = secrets_of(provider)
    cookies = [r.cookies["session"] for r in result.replies if "session" in r.cookies]
    cookies.append(http.cookies["session"])
    assert len(cookies) >= 2  # the refreshing responses set a new cookie
    for cookie in cookies:
        assert not leaks(cookie, secrets)
        payload = cookie_payload(cookie)
        assert not leaks(payload, secrets), leaks(payload, secrets)
        record = json.loads(payload)[SESSION_KEY]
        assert set(record) == {"v", "exp", "due", "fp", "st", "box"}
        assert record["box"].startswith("tg1.")


# -- rotation --------------------------------------------------------------------------------

ROTATIONS = {
    "TOKENGUARD_SECRET": (
        {"TOKENGUARD_SECRET": "key-A"},
        {"TOKENGUARD_SECRET": "key-B", "TOKENGUARD_SECRET_FALLBACKS": ["key-A"]},
        {"TOKENGUARD_SECRET": "key-B"},
    ),
    "SECRET_KEY": (
        {"SECRET_KEY": "key-A"},
        {"SECRET_KEY": "key-B", "SECRET_KEY_FALLBACKS": ["key-A"]},
        {"SECRET_KEY": "key-B"},
    ),
}


@pytest.mark.parametrize("rotation", sorted(ROTATIONS))
def test_a_rotated_secret_still_opens_and_the_next_request_reseals(provider, app_factory, rotation):
    only_a, b_with_a, only_b = ROTATIONS[rotation]
    token = provider.issue(expires_in=3600)
    before = seeded(app_factory(**only_a), token)
    data = session_of(before)
    assert opens_with(provider, data, "key-A")
    assert not opens_with(provider, data, "key-B")

    after = app_factory(**b_with_a).test_client()
    move_cookie(before, after)
    reply = after.get("/_test/mine")  # opens the token (fallback), so it is resealed
    assert reply.status_code == 200
    assert reply.json["access_token"] == token["access_token"]
    data = session_of(after)
    assert opens_with(provider, data, "key-B")
    assert not opens_with(provider, data, "key-A")

    dropped = app_factory(**only_b).test_client()
    move_cookie(after, dropped)
    reply = dropped.get("/api/profile")  # the token works at the provider
    assert reply.status_code == 200, reply.json
    assert reply.json["profile"]["sub"] == "alice"
    assert provider.stats()["refresh_requests"] == 0


@pytest.mark.parametrize("rotation", sorted(ROTATIONS))
def test_a_store_entry_sealed_under_the_old_secret_opens_with_the_fallback(
    provider, tmp_path, rotation
):
    only_a, b_with_a, _ = ROTATIONS[rotation]
    store_url = f"file://{tmp_path / 'store'}"
    token = provider.issue(expires_in=0)
    app_a = make_app(provider, str(tmp_path / "a"), TOKENGUARD_CACHE_URL=store_url, **only_a)
    client_a = seeded(app_a, token)
    stale = app_a.test_client()
    move_cookie(client_a, stale)
    assert client_a.get("/api/profile").status_code == 200
    assert provider.stats()["refreshes"] == 1

    keys = KeyNames(provider.client_id)
    key = keys.result(token["refresh_token"])
    store = FileStore(str(tmp_path / "store"))
    text = store.read(key)
    assert text is not None and text.startswith("tg1.")
    assert RecordCodec(Sealer(["key-B", "key-A"], "store")).decode(key, text) is not None
    assert RecordCodec(Sealer(["key-B"], "store")).decode(key, text) is None

    # A request that still holds the old token, on an app rotated to B: it adopts the result
    # sealed under A, without presenting the old refresh token again.
    app_b = make_app(provider, str(tmp_path / "b"), TOKENGUARD_CACHE_URL=store_url, **b_with_a)
    late = app_b.test_client()
    move_cookie(stale, late)
    reply = late.get("/api/profile")
    assert reply.status_code == 200, reply.json
    stats = provider.stats()
    assert stats["refreshes"] == 1
    assert stats["max_presentations"] == 1


# -- tampering -------------------------------------------------------------------------------


def _flip_box(record: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {**record, "box": flip(record["box"])}


def _other_users_record(record: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return dict(other)


def _earlier_exp(record: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {**record, "exp": record["exp"] - 30}


def _other_fp(record: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {**record, "fp": other["fp"]}


def _no_fp(record: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {**record, "fp": None}


def _other_box(record: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {**record, "box": other["box"]}


TAMPERS = {
    "flipped byte": _flip_box,
    "another user's record": _other_users_record,
    "edited exp": _earlier_exp,
    "edited fp": _other_fp,
    "removed fp": _no_fp,
    "another user's blob": _other_box,
}


def refused(caplog: pytest.LogCaptureFixture, provider: Any) -> None:
    """The log says why, by the reason only: no token, no record content."""
    reasons = [
        r.getMessage()
        for r in caplog.records
        if r.name == "flask_tokenguard" and "discarding the session's token" in r.getMessage()
    ]
    assert reasons, [r.getMessage() for r in caplog.records]
    assert any("does not open" in m for m in reasons), reasons
    secrets = secrets_of(provider)
    for r in caplog.records:
        assert not leaks(r.getMessage(), secrets)


@pytest.mark.parametrize("tamper", list(TAMPERS), ids=list(TAMPERS))
def test_a_tampered_session_record_is_no_token(provider, app_factory, caplog, tamper):
    caplog.set_level(logging.WARNING, logger="flask_tokenguard")
    app = app_factory()
    # Due tokens: the hook opens the blob before any refresh.
    alice = seeded(app, provider.issue("alice", expires_in=0))
    bob = seeded(app, provider.issue("bob", expires_in=0))
    alice_record = session_of(alice)[SESSION_KEY]

    def edit(data: dict[str, Any]) -> None:
        data[SESSION_KEY] = TAMPERS[tamper](data[SESSION_KEY], alice_record)

    edit_session(bob, edit)
    reply = bob.get("/api/profile")
    assert reply.status_code == 401, reply.status_code
    assert reply.json["error"] == "unauthorized"
    assert SESSION_KEY not in session_of(bob)  # counts as no token: removed
    assert provider.stats()["refresh_requests"] == 0  # nobody's token was presented
    refused(caplog, provider)

    # Alice's own session is untouched and still hers.
    reply = alice.get("/api/profile")
    assert reply.status_code == 200
    assert reply.json["profile"]["sub"] == "alice"


FRESH_TAMPERS = {
    "flipped byte": lambda record: {**record, "box": flip(record["box"])},
    "exp pushed forward": lambda record: {**record, "exp": record["exp"] + 3600},
}


def tamper_fresh(client: FlaskClient, tamper: str) -> None:
    edit_session(client, lambda d: d.update({SESSION_KEY: FRESH_TAMPERS[tamper](d[SESSION_KEY])}))


@pytest.mark.parametrize("tamper", list(FRESH_TAMPERS))
def test_a_tampered_record_that_looks_fresh_never_serves_a_token(
    provider, app_factory, caplog, tamper
):
    """The fast path opens nothing; the view that opens the blob gets no token, never a 500."""
    caplog.set_level(logging.WARNING, logger="flask_tokenguard")
    client = seeded(app_factory(), provider.issue(expires_in=3000))
    tamper_fresh(client, tamper)
    reply = client.get("/_test/mine")
    assert reply.status_code in (200, 401), reply.status_code
    assert reply.status_code == 401 or reply.json is None  # no token reached the view
    assert SESSION_KEY not in session_of(client)
    assert provider.stats()["refresh_requests"] == 0
    refused(caplog, provider)


@pytest.mark.parametrize("session_kind", ["cookie"], indirect=True)
@pytest.mark.parametrize("tamper", list(FRESH_TAMPERS))
def test_the_decorator_answers_401_for_a_tampered_record_that_looks_fresh(
    provider, app_factory, tamper
):
    client = seeded(app_factory(), provider.issue(expires_in=3000))
    tamper_fresh(client, tamper)
    reply = client.get("/_test/mine")
    assert reply.status_code == 401, (reply.status_code, reply.json)


EVIL_RECORD = {
    "outcome": "ok",
    "token": {"access_token": "forged", "refresh_token": "forged", "expires_in": 3600},
    "at": 0,
}
FORGERIES = ("moved from another key", "plain JSON", "another secret", "pickle", "!pickle")


def forged(forgery: str, key: str, alice_text: str) -> bytes:
    if forgery == "moved from another key":
        return alice_text.encode()
    if forgery == "plain JSON":
        return json.dumps(EVIL_RECORD).encode()
    if forgery == "another secret":
        return RecordCodec(Sealer(["someone else"], "store")).encode(key, EVIL_RECORD).encode()
    if forgery == "pickle":
        return pickle.dumps(_Boom())
    return b"!" + pickle.dumps(_Boom())


@pytest.mark.parametrize("backend", ["file", "redis"])
@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_or_moved_store_entry_is_absent(
    provider, tmp_path, request, caplog, backend, forgery
):
    """Bob's result and tombstone keys hold what an attacker wrote: both read as absent."""
    caplog.set_level(logging.WARNING, logger="flask_tokenguard")
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix") + "tg"
        config = {"TOKENGUARD_CACHE_URL": url, "TOKENGUARD_KEY_PREFIX": prefix}
    else:
        prefix = "tokenguard"
        config = {"TOKENGUARD_CACHE_URL": f"file://{tmp_path / 'store'}"}
    app = make_app(provider, str(tmp_path / "instance"), **config)
    add_test_routes(app)
    state = app.extensions["tokenguard"]
    keys = KeyNames(provider.client_id, prefix)

    alice_token = provider.issue("alice", expires_in=0)
    assert seeded(app, alice_token).get("/api/profile").status_code == 200
    alice_text = state.store.read(keys.result(alice_token["refresh_token"]))
    assert alice_text is not None  # alice's result, sealed, published under her key
    bob_rt = (bob_token := provider.issue("bob", expires_in=0))["refresh_token"]

    for key in (keys.result(bob_rt), keys.revoked(bob_rt)):
        raw = forged(forgery, key, alice_text)
        if backend == "redis":
            client = redis.Redis.from_url(url)
            try:
                client.set(key, raw, ex=60)
            finally:
                client.close()
        elif forgery.endswith("pickle"):
            state.store.value_path(key).write_bytes(raw)
        else:  # a well-formed file record around the forged text
            record = {"value": raw.decode(), "expires": 4102444800.0}
            state.store.value_path(key).write_text(json.dumps(record))

    assert state.rules.coordinator.newest(bob_rt) is None
    assert not state.rules.coordinator.is_revoked(bob_rt)
    bob = seeded(app, bob_token)
    reply = bob.get("/_test/mine")
    assert reply.status_code == 200
    assert reply.json["access_token"] == provider.issued()["access_tokens"][-1]
    profile = bob.get("/api/profile")
    assert profile.json["profile"]["sub"] == "bob"  # bob's own refresh, not alice's tokens
    assert provider.presentations(bob_rt) == 1
    assert _PWNED == []
    if not forgery.endswith("pickle"):  # a pickle is not even text: it reads as absent
        assert any("ignoring" in r.getMessage() for r in caplog.records)


# -- views and signals see the plain token -----------------------------------------------------


def test_views_and_signals_see_the_plain_token(provider, app_factory):
    app = app_factory()
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, token: dict[str, Any]) -> None:
        seen.append(token)

    token_refreshed.connect(receiver, app)
    try:
        client = seeded(app, provider.issue(expires_in=0))
        reply = client.get("/_test/mine")
    finally:
        token_refreshed.disconnect(receiver, app)
    assert reply.status_code == 200
    view_token = reply.json
    issued = provider.issued()
    assert view_token["access_token"] == issued["access_tokens"][-1]
    assert view_token["refresh_token"] == issued["refresh_tokens"][-1]
    assert view_token["token_type"] == "Bearer"
    assert isinstance(view_token["expires_at"], (int, float))
    assert len(seen) == 1
    assert seen[0]["access_token"] == view_token["access_token"]
    assert seen[0]["refresh_token"] == view_token["refresh_token"]


# -- logs ----------------------------------------------------------------------------------------


def record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        text += record.exc_text
    if record.stack_info:
        text += record.stack_info
    return text


def capture_every_logger_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    for name in [*logging.root.manager.loggerDict, "requests_oauthlib", "urllib3", "oauthlib"]:
        caplog.set_level(logging.DEBUG, logger=name)


def test_a_redacted_debug_record_still_formats(caplog):
    capture_every_logger_at_debug(caplog)
    install_redaction()  # what init_app does
    logging.getLogger("requests_oauthlib.oauth2_session").debug(
        "Invoking %d token response hooks.", 1
    )
    assert "token response hooks" in caplog.records[-1].getMessage()


def test_no_log_record_at_any_level_holds_a_token_or_the_client_secret(
    provider, tmp_path, caplog, browser
):
    capture_every_logger_at_debug(caplog)
    app = make_app(provider, str(tmp_path / "instance"))
    add_test_routes(app)
    provider.set_faults(refresh_delay=0.2)
    with serve(app) as base:
        # a burst with a refresh
        http = browser(base, provider.issue(expires_in=0))
        assert burst(http, f"{base}/api/profile", 8).statuses == [200] * 8
        assert http.get(f"{base}/_test/mine", timeout=5).status_code == 200
        # an invalid_grant
        dead = provider.issue("bob", expires_in=0)
        provider.revoke(dead["refresh_token"])
        assert browser(base, dead).get(f"{base}/api/profile", timeout=5).status_code == 401
        # malformed sessions that carry token values in the wrong places
        leaked = provider.issue("carol", expires_in=0)
        for record in (
            {"v": 1, "exp": leaked["access_token"], "fp": None, "st": "ok", "box": "tg1.x"},
            {"v": 1, "exp": 0, "fp": leaked["refresh_token"], "st": "ok", "box": "tg1.x"},
            {"v": 1, "exp": 0, "fp": None, "st": "ok", "box": json.dumps(leaked)},
            {"v": 1, "exp": 0, "fp": None, "st": leaked["refresh_token"], "box": "x"},
            {"v": leaked["access_token"]},
        ):
            carol = browser(base)
            assert carol.post(f"{base}/_test/raw", json=record, timeout=5).status_code == 200
            reply = carol.get(f"{base}/api/profile", timeout=5)
            assert reply.status_code == 401
            assert not leaks(reply.text, secrets_of(provider))
        # a provider that answers garbage after rotating
        provider.set_faults(garbage=1, refresh_delay=0)
        garbage = browser(base, provider.issue("dave", expires_in=0))
        assert garbage.get(f"{base}/api/profile", timeout=5).status_code == 401

    secrets = secrets_of(provider)
    assert len(secrets) >= 10
    records = caplog.records
    for record in records:
        found = leaks(record_text(record), secrets)
        assert not found, f"{record.name}:{record.levelname} {record.msg!r} leaks {found}"
    # The capture really saw the chatty loggers and the extension's reasons.
    names_seen = {r.name for r in records}
    assert any(n.startswith("urllib3") for n in names_seen), names_seen
    messages = " ".join(r.getMessage() for r in records if r.name == "flask_tokenguard")
    assert "discarding the session's token" in messages
    assert "ambiguous" in messages or "outcome unknown" in messages


def test_a_session_from_another_app_secret_is_not_opened_and_says_why(provider, tmp_path, caplog):
    """Same ``SECRET_KEY`` for the cookie, another ``TOKENGUARD_SECRET`` for the seal."""
    caplog.set_level(logging.WARNING, logger="flask_tokenguard")
    first = make_app(provider, str(tmp_path / "a"), TOKENGUARD_SECRET="first")
    second = make_app(provider, str(tmp_path / "b"), TOKENGUARD_SECRET="second")
    before = seeded(first, provider.issue(expires_in=0))
    after = second.test_client()
    move_cookie(before, after)
    reply = after.get("/api/profile")
    assert reply.status_code == 401
    assert any("not configured" in r.getMessage() for r in caplog.records)
    assert provider.stats()["refresh_requests"] == 0


def test_the_stale_client_of_a_burst_sees_only_sealed_blobs(provider, guarded, browser):
    """Every Set-Cookie of every response, stale ones included, carries a sealed blob only."""
    base = guarded()
    http = browser(base, provider.issue(expires_in=0))
    stale = browser(base)
    stale.cookies.update(http.cookies)
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    reply = stale.get(f"{base}/api/profile", timeout=5)  # adopts, heals, sets a cookie
    assert reply.status_code == 200
    payload = cookie_payload(reply.cookies["session"])
    assert not leaks(payload, secrets_of(provider))
    assert json.loads(payload)[SESSION_KEY]["box"].startswith("tg1.")
