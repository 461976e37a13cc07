"""A user's token in a background job: ``guard.token_for(subject)`` beside the browsers.

docs/design.md, "Background jobs". A sign-in leaves a durable grant (a row in the grant store
linked to the session's record in the shared store); a job opens that record through the same
rules and coordinator as the browser, so the two never both present one refresh token and each
heals from the other's result. Against the real demo provider (strict: a used refresh token
revokes the family), the real Redis, SQLite and PostgreSQL, and real gunicorn workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import requests

sa = pytest.importorskip("sqlalchemy", reason="SQLAlchemy is not installed (the 'sql' extra)")

from flask import Flask  # noqa: E402

from flask_tokenguard import ConfigurationError, TokenGuard  # noqa: E402
from flask_tokenguard.errors import InvalidGrant  # noqa: E402
from flask_tokenguard.grants import GrantStore  # noqa: E402
from flask_tokenguard.testing import ProviderHandle  # noqa: E402

from .fixtures.apps import burst, clone_cookies, make_app, new_client  # noqa: E402
from .fixtures.servers import serve  # noqa: E402
from .test_backchannel_logout import demo_app_setup, demo_sign_in  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Site:
    """One app served on a real threaded server, with its guard, for jobs and browsers."""

    def __init__(self, app: Flask, url: str) -> None:
        self.app = app
        self.url = url
        self.guard: TokenGuard = app.extensions["tokenguard_guard"]

    def token_for(self, subject: str) -> dict[str, Any]:
        with self.app.app_context():
            return self.guard.token_for(subject)

    def grants(self, subject: str) -> list[Any]:
        with self.app.app_context():
            return self.guard.grant_store().list(subject)

    def grant_store(self) -> GrantStore:
        with self.app.app_context():
            return self.guard.grant_store()

    def browser(self, token: dict[str, Any], subject: str | None) -> requests.Session:
        return new_client(self.url, token, subject=subject)

    def current(self, http: requests.Session) -> dict[str, Any]:
        return dict(http.get(f"{self.url}/_test/token", timeout=10).json())

    def profile(self, http: requests.Session) -> int:
        return http.get(f"{self.url}/api/profile", timeout=15).status_code


@pytest.fixture
def site(
    provider: Any, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Callable[..., Site]]:
    """``site(**config)``: the test app with offline grants (SQLite), sharing Redis."""
    stack = ExitStack()

    def start(**config: Any) -> Site:
        settings = {
            "TOKENGUARD_CACHE_URL": redis_url,
            "TOKENGUARD_KEY_PREFIX": redis_prefix + "tg",
            "TOKENGUARD_OFFLINE_GRANTS": True,
            "TOKENGUARD_GRANT_STORE_URL": f"sqlite:///{tmp_path / 'grants.db'}",
            **config,
        }
        app = make_app(provider, str(tmp_path / "instance"), **settings)
        stack.callback(close_grant_store, app)
        return Site(app, stack.enter_context(serve(app)))

    with stack:
        yield start


def close_grant_store(app: Flask) -> None:
    state = app.extensions["tokenguard"]
    if state.grant_store is not None:
        state.grant_store.close()


def subject() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def ticket_keys(redis_url: str, prefix: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return list(client.scan_iter(match=f"{prefix}tg:ticket:*"))
    finally:
        client.close()


def forget_records(redis_url: str, prefix: str) -> int:
    """Delete every token record of this test from Redis (a store that lost them)."""
    import redis

    keys = ticket_keys(redis_url, prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


# -- one grant, a job and a browser -----------------------------------------------------------


def test_a_job_and_the_browser_share_every_refresh(site: Callable[..., Site], provider) -> None:
    provider.set_faults(access_ttl=4)  # due after half its life: 2 s
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=0), user)

    # The job refreshes the expired token once; the browser heals from it with no call.
    job_token = web.token_for(user)
    assert provider.stats()["refreshes"] == 1
    assert web.profile(http) == 200
    assert web.current(http)["access_token"] == job_token["access_token"]
    assert provider.stats()["refresh_requests"] == 1

    # A fresh token costs the job nothing.
    assert web.token_for(user)["access_token"] == job_token["access_token"]
    assert provider.stats()["refresh_requests"] == 1

    # The reverse: the browser refreshes, the job takes its result with no call.
    time.sleep(2.1)
    assert web.profile(http) == 200
    assert provider.stats()["refreshes"] == 2
    browser_token = web.current(http)
    assert web.token_for(user)["refresh_token"] == browser_token["refresh_token"]
    stats = provider.stats()
    assert stats["refresh_requests"] == 2 and stats["max_presentations"] == 1
    assert stats["families_revoked"] == 0

    # The durable copy followed the chain: it holds the live refresh token.
    (grant,) = web.grants(user)
    assert grant.token["refresh_token"] == browser_token["refresh_token"]


def test_a_job_racing_a_browser_burst_in_one_process(site: Callable[..., Site], provider) -> None:
    provider.set_faults(refresh_delay=0.3)
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=0), user)
    jobs: list[Any] = []

    def job() -> None:
        try:
            jobs.append(web.token_for(user)["access_token"])
        except Exception as exc:  # reported below
            jobs.append(exc)

    threads = [threading.Thread(target=job) for _ in range(4)]
    for thread in threads:
        thread.start()
    result = burst(http, f"{web.url}/api/profile", 16)
    for thread in threads:
        thread.join(20)
    assert result.statuses == [200] * 16
    assert all(isinstance(t, str) for t in jobs) and len(set(jobs)) == 1, jobs
    stats = provider.stats()
    assert stats["refresh_requests"] == 1 and stats["max_presentations"] == 1


# -- several devices, logout, sign out everywhere ----------------------------------------------


def test_the_most_recently_used_grant_serves_and_logout_ends_only_its_own(
    site: Callable[..., Site], provider
) -> None:
    web, user = site(), subject()
    laptop = web.browser(provider.issue(user, expires_in=0), user)
    phone = web.browser(provider.issue(user, expires_in=600), user)
    assert len(web.grants(user)) == 2
    # The phone signed in last: its grant serves, as it is (fresh: no refresh).
    assert web.token_for(user)["access_token"] == web.current(phone)["access_token"]
    assert provider.stats()["refresh_requests"] == 0

    # The laptop's browser refreshes: its grant is now the most recently used one.
    assert web.profile(laptop) == 200
    assert web.token_for(user)["access_token"] == web.current(laptop)["access_token"]
    assert provider.stats()["refresh_requests"] == 1

    # Signing out on the laptop ends its grant only: the job goes on with the phone's.
    assert laptop.get(f"{web.url}/logout", timeout=10).ok
    assert web.token_for(user)["access_token"] == web.current(phone)["access_token"]
    assert len(web.grants(user)) == 1
    assert phone.get(f"{web.url}/logout", timeout=10).ok
    with pytest.raises(InvalidGrant, match="sign in again"):
        web.token_for(user)
    assert web.grants(user) == []


def test_logout_all_ends_the_jobs_too(site: Callable[..., Site], provider) -> None:
    web, user = site(), subject()
    devices = [web.browser(provider.issue(user, expires_in=600), user) for _ in range(2)]
    web.token_for(user)
    with web.app.app_context():
        assert web.guard.logout_all(user) == 2
    assert [web.profile(d) for d in devices] == [401, 401]
    with pytest.raises(InvalidGrant):
        web.token_for(user)
    assert web.grants(user) == []


def test_a_copied_cookie_stays_dead_after_logout_whatever_the_jobs_do(
    site: Callable[..., Site], provider, redis_url: str, redis_prefix: str
) -> None:
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=600), user)
    copy = clone_cookies(http)
    assert http.get(f"{web.url}/logout", timeout=10).ok
    forget_records(redis_url, redis_prefix)  # nothing left to restore from either
    with pytest.raises(InvalidGrant):
        web.token_for(user)
    assert web.profile(copy) == 401
    assert ticket_keys(redis_url, redis_prefix) == []


def test_a_sign_in_without_a_subject_leaves_no_grant(site: Callable[..., Site], provider) -> None:
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=600), None)
    assert web.profile(http) == 200
    assert web.grants(user) == []
    with pytest.raises(InvalidGrant):
        web.token_for(user)


# -- the shared store loses records; the provider ends a grant ---------------------------------


def test_a_record_lost_by_the_store_comes_back_from_the_grant(
    site: Callable[..., Site], provider, redis_url: str, redis_prefix: str
) -> None:
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=0), user)
    assert forget_records(redis_url, redis_prefix) == 1
    token = web.token_for(user)  # written back from the row, then refreshed once
    stats = provider.stats()
    assert stats["refreshes"] == 1 and stats["max_presentations"] == 1
    # The browser's ticket points at the same record: it is signed in again, with no call.
    assert web.profile(http) == 200
    assert web.current(http)["access_token"] == token["access_token"]
    assert provider.stats()["refresh_requests"] == 1


def test_a_row_left_behind_is_repaired_before_it_is_needed(
    site: Callable[..., Site], provider, redis_url: str, redis_prefix: str
) -> None:
    """A writer that died between the store and the database left the row one rotation
    behind; the next job repairs it, so a later restore never presents a used token."""
    provider.set_faults(access_ttl=4)
    web, user = site(), subject()
    first = provider.issue(user, expires_in=0)
    http = web.browser(first, user)
    assert web.profile(http) == 200  # refreshed by the browser; the row advanced
    store = web.grant_store()
    (grant,) = web.grants(user)
    assert store.replace(grant.grant_id, grant.version, first)  # now one rotation behind
    web.token_for(user)  # sees the row behind, repairs it
    (grant,) = web.grants(user)
    assert grant.token["refresh_token"] == web.current(http)["refresh_token"]

    forget_records(redis_url, redis_prefix)
    time.sleep(2.1)
    web.token_for(user)
    stats = provider.stats()
    assert stats["refreshes"] == 2 and stats["reuse_detected"] == 0
    assert stats["families_revoked"] == 0


def test_a_grant_whose_row_outlived_its_logout_is_never_brought_back(
    site: Callable[..., Site], provider, redis_url: str, redis_prefix: str, monkeypatch
) -> None:
    """The database was down at logout (the row stayed), then the store lost the record: the
    logout's tombstone keeps the job from writing the record back."""
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=600), user)
    copy = clone_cookies(http)
    store = web.grant_store()

    def down(*args: Any) -> bool:
        raise sa.exc.OperationalError("DELETE", {}, Exception("the database is down"))

    with monkeypatch.context() as patch:
        patch.setattr(store, "delete", down)
        assert http.get(f"{web.url}/logout", timeout=10).ok  # the logout itself goes on
    assert len(web.grants(user)) == 1
    forget_records(redis_url, redis_prefix)
    with pytest.raises(InvalidGrant):
        web.token_for(user)
    assert web.grants(user) == []  # recognised as signed out, and deleted now
    assert ticket_keys(redis_url, redis_prefix) == []
    assert web.profile(copy) == 401


def test_a_logout_while_a_job_brings_the_record_back_wins(
    site: Callable[..., Site], provider, redis_url: str, redis_prefix: str, monkeypatch
) -> None:
    """The logout deletes the row, then the record; a job writing the record back in between
    sees the row gone afterwards and deletes what it wrote."""
    web, user = site(), subject()
    http = web.browser(provider.issue(user, expires_in=600), user)
    store = web.grant_store()
    forget_records(redis_url, redis_prefix)
    real_get = store.get

    def get_after_logout(grant_id: str) -> Any:
        store.delete(grant_id)  # the logout's first step lands just now
        return real_get(grant_id)

    monkeypatch.setattr(store, "get", get_after_logout)
    with pytest.raises(InvalidGrant):
        web.token_for(user)
    assert ticket_keys(redis_url, redis_prefix) == []
    assert web.profile(http) == 401


def test_a_grant_the_provider_revoked_is_deleted(site: Callable[..., Site], provider) -> None:
    web, user = site(), subject()
    token = provider.issue(user, expires_in=0)
    http = web.browser(token, user)
    provider.revoke(token["refresh_token"])
    with pytest.raises(InvalidGrant, match="sign in again"):
        web.token_for(user)
    assert web.grants(user) == []
    assert web.profile(http) == 401


def test_revoking_a_grant_from_the_command_line_ends_it_everywhere(
    site: Callable[..., Site], provider
) -> None:
    web, user = site(TOKENGUARD_REVOCATION_URL=f"{provider.url}/revoke"), subject()
    token = provider.issue(user, expires_in=600)
    http = web.browser(token, user)
    (grant,) = web.grants(user)
    result = web.app.test_cli_runner().invoke(args=["tokenguard", "revoke", grant.grant_id])
    assert result.exit_code == 0, result.output
    assert web.profile(http) == 401
    assert provider.introspect(token["refresh_token"]).json()["active"] is False
    with pytest.raises(InvalidGrant):
        web.token_for(user)


def test_revoking_a_grant_whose_row_is_behind_revokes_the_newest_token(
    site: Callable[..., Site], provider
) -> None:
    web, user = site(TOKENGUARD_REVOCATION_URL=f"{provider.url}/revoke"), subject()
    first = provider.issue(user, expires_in=0)
    http = web.browser(first, user)
    assert web.profile(http) == 200  # refreshed
    newest = web.current(http)["refresh_token"]
    store = web.grant_store()
    (grant,) = web.grants(user)
    assert store.replace(grant.grant_id, grant.version, first)  # the row one rotation behind
    with web.app.app_context():
        assert web.guard.revoke_grant(grant.grant_id)
    assert provider.introspect(newest).json()["active"] is False
    coordinator = web.app.extensions["tokenguard"].rules.coordinator
    assert coordinator.is_revoked(newest)  # a refresh finishing later cannot bring it back
    assert web.profile(http) == 401


# -- back-channel logout -------------------------------------------------------------------------


def test_a_back_channel_logout_ends_that_sessions_grant_only(tmp_path: Path) -> None:
    grants = f"sqlite:///{tmp_path / 'grants.db'}"
    setup = demo_app_setup(
        tmp_path, TOKENGUARD_OFFLINE_GRANTS=True, TOKENGUARD_GRANT_STORE_URL=grants
    )
    with setup as (server, base, app):
        handle = ProviderHandle(server)
        web = Site(app, base)
        first, second = demo_sign_in(base), demo_sign_in(base)
        me = first.get(f"{base}/me", timeout=10).json()
        user, sid = me["sub"], me["claims"]["sid"]
        assert len(web.grants(user)) == 2
        assert handle.logout(sid=sid)["delivered"] == 1
        (left,) = web.grants(user)
        assert web.token_for(user)["access_token"] == web.current(second)["access_token"]
        assert left.link is not None and left.link.sid != sid
        assert web.profile(first) == 401 and web.profile(second) == 200
        close_grant_store(app)


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({}, "TOKENGUARD_GRANT_STORE_URL"),
        (
            {"TOKENGUARD_GRANT_STORE_URL": "sqlite://", "TOKENGUARD_TOKEN_STORAGE": "session"},
            "TOKENGUARD_TOKEN_STORAGE",
        ),
    ],
)
def test_offline_grants_need_a_database_and_tokens_in_the_store(
    provider, tmp_path: Path, config: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigurationError, match=match):
        make_app(provider, str(tmp_path), TOKENGUARD_OFFLINE_GRANTS=True, **config)


def test_offline_grants_without_sqlalchemy_name_the_extra(
    provider, tmp_path: Path, monkeypatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name)
    )
    with pytest.raises(ConfigurationError, match=r"flask-tokenguard\[sql\]"):
        make_app(
            provider,
            str(tmp_path),
            TOKENGUARD_OFFLINE_GRANTS=True,
            TOKENGUARD_GRANT_STORE_URL=f"sqlite:///{tmp_path / 'g.db'}",
        )


def test_token_for_without_offline_grants_names_the_key(provider, tmp_path: Path) -> None:
    app = make_app(provider, str(tmp_path))
    with app.app_context(), pytest.raises(ConfigurationError, match="TOKENGUARD_OFFLINE_GRANTS"):
        app.extensions["tokenguard_guard"].token_for("alice")


# -- processes: gunicorn workers, restarts --------------------------------------------------------


def job_process(env: dict[str, str], user: str) -> dict[str, Any]:
    """``guard.token_for(user)`` in a new process of the app (``tests/fixtures/job.py``)."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.fixtures.job", user],
        cwd=ROOT,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def worker_env(provider: Any, cache_url: str, tmp_path: Path, config: dict[str, Any]) -> dict:
    return {
        "TG_PROVIDER_URL": provider.url,
        "TG_CACHE_URL": cache_url,
        "TG_INSTANCE": str(tmp_path / "instance"),
        "TG_CONFIG": json.dumps(config),
    }


@pytest.mark.slow
def test_a_job_loop_and_bursts_on_four_workers_share_every_rotation(
    provider, gunicorn, redis_url: str, redis_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    """A job calling token_for in a loop while 32-request bursts run on 4 gunicorn workers, over
    5 rotations: each refresh token reaches the provider once, nothing fails."""
    provider.set_faults(refresh_delay=0.3, access_ttl=4)
    user = subject()
    config = {
        "TOKENGUARD_KEY_PREFIX": redis_prefix + "tg",
        "TOKENGUARD_OFFLINE_GRANTS": True,
        "TOKENGUARD_GRANT_STORE_URL": postgres_url,
    }
    server = gunicorn(redis_url, TG_CONFIG=json.dumps(config))
    http = new_client(server.url, provider.issue(user, expires_in=0), subject=user)
    job_app = make_app(
        provider, str(tmp_path / "job-instance"), TOKENGUARD_CACHE_URL=redis_url, **config
    )
    job_guard = job_app.extensions["tokenguard_guard"]
    stop = threading.Event()
    calls: list[str] = []
    failures: list[str] = []

    def job() -> None:
        with job_app.app_context():
            while not stop.is_set():
                try:
                    calls.append(job_guard.token_for(user)["access_token"])
                except Exception as exc:  # reported below
                    failures.append(repr(exc))
                stop.wait(0.02)

    runner = threading.Thread(target=job)
    runner.start()
    statuses: list[Any] = []
    try:
        while provider.stats()["refreshes"] < 5:
            statuses += burst(http, f"{server.url}/api/profile", 32).statuses
            time.sleep(1.0)
    finally:
        stop.set()
        runner.join(30)
        with job_app.app_context():
            job_guard.grant_store().close()
    stats = provider.stats()
    print(
        f"\njob + bursts on 4 workers: {stats['refreshes']} rotations, {stats['refresh_requests']}"
        f" refresh requests, max presentations {stats['max_presentations']}, {len(statuses)}"
        f" browser requests ({statuses.count(200)} x 200), {len(calls)} job calls"
        f" ({len(set(calls))} distinct tokens), {len(failures)} job failures"
    )
    assert failures == []
    assert statuses == [200] * len(statuses)
    assert stats["refresh_requests"] == stats["refreshes"]  # one refresh per rotation
    assert stats["max_presentations"] == 1 and stats["reuse_detected"] == 0
    assert stats["families_revoked"] == 0
    assert len(set(calls)) >= 4  # the job went through the rotations too


@pytest.mark.slow
def test_grants_survive_a_restart_of_every_app_process(
    provider, gunicorn, redis_url: str, redis_prefix: str, postgres_url: str, tmp_path: Path
) -> None:
    user = subject()
    config = {
        "TOKENGUARD_KEY_PREFIX": redis_prefix + "tg",
        "TOKENGUARD_OFFLINE_GRANTS": True,
        "TOKENGUARD_GRANT_STORE_URL": postgres_url,
    }
    provider.set_faults(access_ttl=12)  # due 7 s after each refresh (leeway 5 s)
    server = gunicorn(redis_url, TG_CONFIG=json.dumps(config))
    http = new_client(server.url, provider.issue(user, expires_in=0), subject=user)
    assert http.get(f"{server.url}/api/profile", timeout=15).status_code == 200
    refreshed = time.monotonic()
    server.stop()  # every worker gone; the job runs in a process of its own

    env = worker_env(provider, redis_url, tmp_path, config)
    first = job_process(env, user)
    assert provider.stats()["refreshes"] == 1  # the browser's refresh; the token is fresh
    time.sleep(max(0.0, refreshed + 7.3 - time.monotonic()))
    second = job_process(env, user)  # due now: one refresh, from another new process
    assert second["refresh_token"] != first["refresh_token"]
    stats = provider.stats()
    assert stats["refreshes"] == 2 and stats["max_presentations"] == 1

    again = gunicorn(redis_url, TG_CONFIG=json.dumps(config))
    reply = http.get(f"{again.url}/api/profile", timeout=15)
    assert reply.status_code == 200  # the browser took the job's token
    assert provider.stats()["refresh_requests"] == 2


@pytest.mark.slow
def test_a_redis_restart_loses_claims_and_records_but_not_grants(
    provider, gunicorn, private_redis, postgres_url: str, tmp_path: Path
) -> None:
    user = subject()
    config = {"TOKENGUARD_OFFLINE_GRANTS": True, "TOKENGUARD_GRANT_STORE_URL": postgres_url}
    server = gunicorn(private_redis.url, TG_CONFIG=json.dumps(config))
    http = new_client(server.url, provider.issue(user, expires_in=0), subject=user)
    private_redis.restart()  # no persistence: every record, claim and result is gone

    env = worker_env(provider, private_redis.url, tmp_path, config)
    token = job_process(env, user)  # brought back from the grant, refreshed once
    stats = provider.stats()
    assert stats["refreshes"] == 1 and stats["max_presentations"] == 1
    reply = http.get(f"{server.url}/api/profile", timeout=15)
    assert reply.status_code == 200
    assert (
        http.get(f"{server.url}/_test/token", timeout=10).json()["access_token"]
        == (token["access_token"])
    )
    assert provider.stats()["refresh_requests"] == 1


@pytest.mark.slow
def test_the_runnable_example_job() -> None:
    """``python example_job.py`` (the README's "Background jobs"), briefly, with short tokens."""
    done = subprocess.run(
        [sys.executable, "example_job.py", "--seconds", "6", "--access-ttl", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert ", 0 failed;" in done.stdout and "0 families revoked" in done.stdout
    rotations = int(done.stdout.split(" refresh requests for ")[1].split()[0])
    assert rotations >= 2, done.stdout
