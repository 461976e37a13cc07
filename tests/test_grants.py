"""The durable grant store, against the real PostgreSQL and SQLite files; its CLI."""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

sa = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed (the 'sql' extra)")

from flask import Flask  # noqa: E402

from flask_tokenguard import ConfigurationError, TokenGuard  # noqa: E402
from flask_tokenguard.grants import GrantStore, engine_url  # noqa: E402
from flask_tokenguard.sealing import Sealer  # noqa: E402

SECRET = "grant-store-test-secret-0123456789abcdef"
UTC = datetime.timezone.utc


def token(n: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "access_token": f"access-{n}-{'a' * 24}",
        "refresh_token": f"refresh-{n}-{'r' * 24}",
        "token_type": "Bearer",
        "expires_at": time.time() + 600,
        **extra,
    }


@pytest.fixture
def store(grant_engine: Any, grant_table: str) -> GrantStore:
    return GrantStore(
        grant_engine, client_id="demo-client", sealer=Sealer([SECRET], "grants"), table=grant_table
    )


def raw_rows(store: GrantStore) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(sa.select(store.table))]


def test_round_trip(store: GrantStore) -> None:
    first = store.put("alice", token(1))
    second = store.put("alice", token(2), expires_at=time.time() + 3600)
    store.put("bob", token(3))
    grant = store.get(first)
    assert grant is not None
    assert grant.subject == "alice" and grant.token["refresh_token"] == token(1)["refresh_token"]
    assert grant.version == 1 and grant.expires_at is None
    assert grant.created_at.tzinfo is not None
    assert [g.grant_id for g in store.list("alice")] == [first, second]
    assert [g.subject for g in store.list("bob")] == ["bob"]
    assert store.list("carol") == []
    assert store.get("no-such-grant") is None
    # The table is created only when missing: a second store on it sees the same rows.
    again = GrantStore(
        store.engine, client_id="demo-client", sealer=store.sealer, table=store.table.name
    )
    assert [g.grant_id for g in again.list("alice")] == [first, second]


def test_replace_is_compare_and_set(store: GrantStore) -> None:
    grant_id = store.put("alice", token(1))
    assert store.replace(grant_id, 1, token(2))
    assert not store.replace(grant_id, 1, token(3))  # stale version
    assert not store.replace("no-such-grant", 1, token(3))
    grant = store.get(grant_id)
    assert grant is not None and grant.version == 2
    assert grant.token["access_token"] == token(2)["access_token"]
    assert grant.updated_at >= grant.created_at


def test_only_one_of_concurrent_replaces_wins(store: GrantStore) -> None:
    grant_id = store.put("alice", token(0))
    n = 8
    for version in (1, 2, 3):
        barrier = threading.Barrier(n)

        def one(i: int, version: int = version) -> bool:
            barrier.wait()
            return store.replace(grant_id, version, token(100 * version + i))

        with ThreadPoolExecutor(max_workers=n) as pool:
            won = list(pool.map(one, range(n)))
        assert won.count(True) == 1, won
        grant = store.get(grant_id)
        assert grant is not None and grant.version == version + 1
        assert grant.token["access_token"] == token(100 * version + won.index(True))["access_token"]


def test_delete_and_delete_subject(store: GrantStore) -> None:
    a1, _a2, b1 = (
        store.put("alice", token(1)),
        store.put("alice", token(2)),
        store.put("bob", token(3)),
    )
    assert store.delete(a1) and not store.delete(a1)
    assert store.delete_subject("alice") == 1
    assert store.list("alice") == []
    assert store.get(b1) is not None


def test_purge_expired(store: GrantStore) -> None:
    now = datetime.datetime.now(UTC)
    gone = store.put("alice", token(1), expires_at=now - datetime.timedelta(seconds=5))
    kept = store.put("alice", token(2), expires_at=now + datetime.timedelta(hours=1))
    never = store.put("alice", token(3))
    keycloak = store.put("alice", token(4, refresh_expires_in=1800))
    assert store.purge_expired(now) == 1
    assert store.get(gone) is None
    assert {g.grant_id for g in store.list("alice")} == {kept, never, keycloak}
    assert store.purge_expired(now + datetime.timedelta(hours=2)) == 2
    assert [g.grant_id for g in store.list("alice")] == [never]


def test_purge_unused(store: GrantStore) -> None:
    idle = store.put("alice", token(1))
    used = store.put("alice", token(2))
    cut = datetime.datetime.now(UTC)
    time.sleep(0.01)
    grant = store.get(used)
    assert grant is not None and store.advance(used, token(2)["refresh_token"], token(3))
    assert store.purge_unused(cut) == 1
    assert [g.grant_id for g in store.list("alice")] == [used]
    assert idle not in {g.grant_id for g in store.list("alice")}


def test_advance_writes_only_the_next_link_of_the_chain(store: GrantStore) -> None:
    grant_id = store.put("alice", token(1))
    assert not store.advance(grant_id, token(0)["refresh_token"], token(2))  # not its link
    assert store.advance(grant_id, token(1)["refresh_token"], token(2))
    assert not store.advance(grant_id, token(1)["refresh_token"], token(3))  # a late repeat
    grant = store.get(grant_id)
    assert grant is not None and grant.token["refresh_token"] == token(2)["refresh_token"]
    assert not store.advance("0" * 48, token(2)["refresh_token"], token(3))  # no such row


def test_a_dump_opens_nothing(store: GrantStore) -> None:
    secrets = [*token(1).values(), *token(2).values(), "alice@example.com"]
    store.put("alice@example.com", token(1))
    grant_id = store.put("alice@example.com", token(2))
    store.replace(grant_id, 1, token(2))
    rows = raw_rows(store)
    assert len(rows) == 2
    dump = repr(rows)
    for value in secrets:
        if isinstance(value, str) and value != "Bearer":
            assert value not in dump
    assert all(row["sealed"].startswith("tg1.") for row in rows)
    # Another secret opens nothing either.
    other = GrantStore(
        store.engine,
        client_id="demo-client",
        sealer=Sealer(["another-secret-0123456789abcdefghijkl"], "grants"),
        table=store.table.name,
    )
    assert other.get(grant_id) is None and other.list("alice@example.com") == []


def test_a_row_moved_to_another_grant_or_subject_does_not_open(store: GrantStore) -> None:
    alice = store.put("alice", token(1))
    bob = store.put("bob", token(2))
    table = store.table
    with store.engine.begin() as conn:
        sealed = conn.execute(sa.select(table.c.sealed).where(table.c.grant_id == alice)).scalar()
        conn.execute(table.update().where(table.c.grant_id == bob).values(sealed=sealed))
    assert store.get(bob) is None  # alice's sealed token under bob's grant id
    assert store.list("bob") == []
    assert not store.replace(bob, 1, token(3))
    # A row whose subject digest was changed to bob's is not bob's.
    with store.engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.grant_id == alice)
            .values(subject_digest=store.subject_digest("bob"))
        )
    assert store.list("bob") == []


def test_a_plain_postgresql_url_opens_with_psycopg(postgres_url: str, grant_table: str) -> None:
    store = GrantStore(
        postgres_url, client_id="demo-client", sealer=Sealer([SECRET], "grants"), table=grant_table
    )
    try:
        assert store.engine.dialect.driver == "psycopg"
        grant_id = store.put("alice", token(1))
        assert [g.grant_id for g in store.list("alice")] == [grant_id]
        with store.engine.connect() as conn:
            schema = conn.execute(sa.text("select current_schema()")).scalar()
        assert str(schema).startswith("tgtest_")  # the session's schema, not public
    finally:
        store.close()


def test_urls_get_the_psycopg_driver() -> None:
    assert engine_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("postgresql+psycopg2://u@h/db") == "postgresql+psycopg2://u@h/db"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"


def test_without_sqlalchemy_the_import_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "try:\n    import flask_tokenguard.grants\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "flask-tokenguard[sql]" in out.stdout


# -- the CLI --------------------------------------------------------------------------------


def cli_app(tmp_path: Path, target: Any) -> Flask:
    app = Flask("grants_cli", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SECRET_KEY=SECRET,
        TOKENGUARD_CLIENT_ID="demo-client",
        TOKENGUARD_CLIENT_SECRET="demo-secret",
        TOKENGUARD_TOKEN_URL="https://id.example.com/token",
        TOKENGUARD_CACHE_URL="simple://",
        TOKENGUARD_GRANT_STORE_URL=target,
    )
    TokenGuard(app)
    return app


def guard_store(app: Flask) -> GrantStore:
    with app.app_context():
        store = app.extensions["tokenguard"].guard.grant_store()
        assert isinstance(store, GrantStore)
        return store


def check_cli(app: Flask) -> None:
    store = guard_store(app)
    past = datetime.datetime.now(UTC) - datetime.timedelta(minutes=1)
    old = store.put("alice", token(1), expires_at=past)
    kept = store.put("alice", token(2), expires_at=time.time() + 3600)
    runner = app.test_cli_runner()

    listed = runner.invoke(args=["tokenguard", "grants", "alice"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert [line.split("\t")[0] for line in lines] == [old, kept]
    assert "created " in lines[0] and "expires " in lines[0]
    assert token(1)["access_token"] not in listed.output
    assert runner.invoke(args=["tokenguard", "grants", "carol"]).output == "no grants for carol\n"

    purged = runner.invoke(args=["tokenguard", "purge"])
    assert purged.exit_code == 0 and purged.output == "purged 1 expired grant\n"
    idle = runner.invoke(args=["tokenguard", "purge", "--unused-for", "1"])
    assert idle.output == "purged 0 expired grants\npurged 0 grants unused for 1 days\n"
    assert runner.invoke(args=["tokenguard", "purge", "--unused-for", "0"]).exit_code == 2
    revoked = runner.invoke(args=["tokenguard", "revoke", kept])
    assert revoked.exit_code == 0 and kept in revoked.output
    assert store.list("alice") == []
    missing = runner.invoke(args=["tokenguard", "revoke", kept])
    assert missing.exit_code == 1 and "no grant" in missing.output
    helped = runner.invoke(args=["tokenguard", "revoke", "--help"])
    assert "at the provider" in helped.output


def test_cli_over_a_url(tmp_path: Path) -> None:
    check_cli(cli_app(tmp_path, f"sqlite:///{tmp_path / 'cli.db'}"))


def test_cli_over_an_engine(tmp_path: Path, grant_engine: Any) -> None:
    with grant_engine.begin() as conn:  # the default table, shared by the session's schema
        conn.execute(sa.text("DROP TABLE IF EXISTS tokenguard_grants"))
    check_cli(cli_app(tmp_path, lambda: grant_engine))  # as Flask-SQLAlchemy's lambda: db.engine


def test_cli_without_a_grant_store_names_the_key(tmp_path: Path) -> None:
    app = cli_app(tmp_path, None)
    result = app.test_cli_runner().invoke(args=["tokenguard", "purge"])
    assert result.exit_code == 2
    assert "TOKENGUARD_GRANT_STORE_URL" in result.output


@pytest.mark.parametrize("value", ["grants.db", 42, ["sqlite://"]])
def test_a_bad_grant_store_setting_is_refused_at_startup(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_GRANT_STORE_URL"):
        cli_app(tmp_path, value)


def test_grant_ids_are_safe_on_a_command_line(tmp_path: Path) -> None:
    """A base64url id may start with "-", which click reads as an option of ``revoke``."""
    store = guard_store(cli_app(tmp_path, f"sqlite:///{tmp_path / 'ids.db'}"))
    ids = [store.put("dora", token(i), expires_at=time.time() + 60) for i in range(64)]
    assert all(len(i) == 48 and all(c in "0123456789abcdef" for c in i) for i in ids)
