"""The per-request rules without Flask: a plain ``dict`` is the session.

See "The per-request rules" in docs/design.md. The provider here is a scripted stand-in (a
unit edge); the same rules run against the real provider in test_refresh_burst.py,
test_failures.py and test_protocol.py.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from flask_tokenguard.coordinator import Coordinator, Policy
from flask_tokenguard.errors import (
    InvalidGrant,
    OutcomeUnknown,
    ProviderUnavailable,
    RefreshError,
    TokenError,
)
from flask_tokenguard.keys import KeyNames
from flask_tokenguard.records import RecordCodec
from flask_tokenguard.rules import Decision, RequestState, TokenRules
from flask_tokenguard.sealing import Sealer
from flask_tokenguard.session import SessionTokens
from flask_tokenguard.stores.memory import MemoryStore
from flask_tokenguard.token import Token, TokenState, refresh_at

SECRET = "a-test-secret-of-at-least-32-bytes-long"
_serial = itertools.count(1)


def token(expires_in: float = 3600, refresh: str | None = None) -> Token:
    n = next(_serial)
    return {
        "access_token": f"at-{n}",
        "refresh_token": refresh or f"rt-{n}",
        "token_type": "Bearer",
        "expires_in": expires_in,
        "expires_at": time.time() + expires_in,
    }


class ScriptedProvider:
    """Answers refreshes from a script: a token, or an error to raise; new tokens by default."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.script: list[Token | RefreshError] = []

    def refresh(self, refresh_token: str, timeout: float) -> Token:
        self.calls.append(refresh_token)
        outcome = self.script.pop(0) if self.script else token()
        if isinstance(outcome, RefreshError):
            raise outcome
        return outcome


class CountingStore(MemoryStore):
    """A memory store that counts round trips, to show the fast path makes none."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def read(self, key: str) -> str | None:
        self.calls += 1
        return super().read(key)

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        self.calls += 1
        return super().claim(key, owner, ttl)

    def _publish(self, key: str, value: str, ttl: float) -> None:
        self.calls += 1
        super()._publish(key, value, ttl)


@pytest.fixture
def world() -> Any:
    class World:
        provider = ScriptedProvider()
        store = CountingStore()
        keys = KeyNames("client")
        tokens = SessionTokens("_tg", Sealer([SECRET], "session"), keys, leeway=60)
        coordinator = Coordinator(
            provider,  # type: ignore[arg-type]
            store,
            keys,
            RecordCodec(Sealer([SECRET], "store")),
            Policy(provider_timeout=2, claim_ttl=3),
        )
        rules = TokenRules(tokens, coordinator, wait_timeout=5)

        def signed_in(self, tok: Token) -> dict[str, Any]:
            session: dict[str, Any] = {}
            self.rules.login(session, RequestState(), tok)
            return session

    return World()


def test_a_token_not_yet_due_costs_no_io(world):
    session = world.signed_in(token(expires_in=3600))
    state = world.rules.check(session, RequestState())
    assert world.store.calls == 0 and world.provider.calls == []
    assert state.token is None  # not even opened
    assert world.rules.verdict(session, state).decision is Decision.SERVE


def test_a_due_token_is_refreshed_and_the_session_holds_the_new_one(world):
    old = token(expires_in=0)
    session = world.signed_in(old)
    new = token()
    world.provider.script = [new]
    state = world.rules.check(session, RequestState())
    assert state.refreshed and world.provider.calls == [old["refresh_token"]]
    again = world.rules.open(session, RequestState(record=world.tokens.peek(session)))
    assert again is not None and again["access_token"] == new["access_token"]
    assert world.rules.verdict(session, state).decision is Decision.SERVE


def test_invalid_grant_removes_the_token_and_the_verdict_is_unauthorized(world):
    session = world.signed_in(token(expires_in=0))
    world.provider.script = [InvalidGrant("dead", status=400, error="invalid_grant")]
    state = world.rules.check(session, RequestState())
    assert "_tg" not in session
    verdict = world.rules.verdict(session, state)
    assert verdict.decision is Decision.UNAUTHORIZED and isinstance(verdict.error, InvalidGrant)


def test_an_unknown_outcome_is_never_presented_again_and_serves_until_expiry(world):
    tok = token(expires_in=30)
    tok["expires_in"] = 3600  # issued long ago: due now, 30 s left
    session = world.signed_in(tok)
    world.provider.script = [OutcomeUnknown("dropped")]
    state = world.rules.check(session, RequestState())
    record = world.tokens.peek(session)
    assert record.state is TokenState.AMBIGUOUS
    assert world.rules.verdict(session, state).decision is Decision.SERVE
    # Later requests do not present it, even when forced.
    later = RequestState()
    assert world.rules.refresh_now(session, later) is None
    assert isinstance(later.error, OutcomeUnknown)
    assert len(world.provider.calls) == 1
    # Once the access token has expired, sign-in is needed.
    world.tokens.save(session, {**tok, "expires_at": time.time() - 1}, TokenState.AMBIGUOUS)
    expired = RequestState(record=world.tokens.peek(session))
    assert world.rules.verdict(session, expired).decision is Decision.UNAUTHORIZED
    assert "_tg" not in session


def test_a_transient_failure_keeps_the_token_and_answers_by_its_expiry(world):
    fresh = token(expires_in=30)
    fresh["expires_in"] = 3600  # due, not expired
    session = world.signed_in(fresh)
    world.provider.script = [ProviderUnavailable("down", status=503, retry_after=1)]
    state = world.rules.check(session, RequestState())
    assert world.tokens.peek(session).state is TokenState.OK
    assert world.rules.verdict(session, state).decision is Decision.SERVE

    expired = world.signed_in(token(expires_in=0))
    world.provider.script = [ProviderUnavailable("down", status=503, retry_after=1)]
    state = world.rules.check(expired, RequestState())
    verdict = world.rules.verdict(expired, state)
    assert verdict.decision is Decision.UNAVAILABLE
    assert isinstance(verdict.error, ProviderUnavailable)
    assert "_tg" in expired  # kept: nothing was consumed


@pytest.mark.parametrize(
    "raw",
    [
        "not a record",
        {"v": 2, "exp": "soon", "due": None, "fp": None, "st": "ok", "box": "x"},
        {"v": 2, "exp": float("nan"), "due": None, "fp": None, "st": "ok", "box": "x"},
        {"v": 2, "exp": None, "due": None, "fp": None, "st": "sure", "box": "x"},
    ],
)
def test_a_malformed_record_is_no_token_and_is_dropped(world, raw):
    session: dict[str, Any] = {"_tg": raw}
    state = world.rules.check(session, RequestState())
    verdict = world.rules.verdict(session, state)
    assert verdict.decision is Decision.UNAUTHORIZED
    assert isinstance(state.error, TokenError)
    assert "_tg" not in session


def test_a_sealed_token_that_does_not_open_is_no_token_once_opened(world):
    """The verdict reads the record's readable part; the token is opened when asked for."""
    session: dict[str, Any] = {
        "_tg": {"v": 2, "exp": None, "due": None, "fp": None, "st": "ok", "box": "tg1.forged"}
    }
    state = world.rules.check(session, RequestState())
    assert world.rules.verdict(session, state).decision is Decision.SERVE
    assert world.rules.open(session, state) is None
    assert isinstance(state.error, TokenError) and "_tg" not in session
    assert world.rules.verdict(session, state).decision is Decision.UNAUTHORIZED


def test_a_stale_session_heals_from_the_published_result_without_a_provider_call(world):
    old = token(expires_in=0)
    fresh_session = world.signed_in(old)
    stale_session = world.signed_in(old)
    world.rules.check(fresh_session, RequestState())
    assert len(world.provider.calls) == 1
    # The stale copy, written back by a slow request, is mended before its response goes out.
    stale = RequestState(record=world.tokens.peek(stale_session))
    assert world.rules.needs_guard(stale)
    world.rules.guard(stale_session, stale)
    healed = world.rules.open(stale_session, RequestState(record=world.tokens.peek(stale_session)))
    assert healed is not None and healed["refresh_token"] != old["refresh_token"]
    assert len(world.provider.calls) == 1


def test_a_token_signed_out_elsewhere_is_not_written_back(world):
    tok = token(expires_in=0)
    here = world.signed_in(tok)
    there = world.signed_in(tok)
    world.rules.logout(there, RequestState())
    state = RequestState(record=world.tokens.peek(here))
    world.rules.guard(here, state)
    assert "_tg" not in here


def test_refresh_now_says_why_it_cannot(world):
    empty: dict[str, Any] = {}
    state = RequestState()
    assert world.rules.refresh_now(empty, state) is None
    assert isinstance(state.error, InvalidGrant)
    no_refresh = world.signed_in({"access_token": "a", "expires_in": 3600})
    state = RequestState()
    assert world.rules.refresh_now(no_refresh, state) is None
    assert isinstance(state.error, InvalidGrant) and "no refresh token" in str(state.error)


def test_login_normalises_a_plain_rfc_6749_reply(world):
    """``expires_in`` only: the expiry is recorded once and does not slide on later reads."""
    session = world.signed_in({"access_token": "a", "refresh_token": "r", "expires_in": 120})
    record = world.tokens.peek(session)
    assert record.exp == pytest.approx(time.time() + 120, abs=2)
    first = world.rules.open(session, RequestState(record=record))
    time.sleep(0.05)
    second = world.rules.open(session, RequestState(record=world.tokens.peek(session)))
    assert first["expires_at"] == second["expires_at"] == record.exp


def test_a_leeway_longer_than_the_lifetime_refreshes_at_half_of_it():
    now = 1000.0
    short = {"access_token": "a", "expires_in": 20, "expires_at": now + 20}
    assert refresh_at(short, leeway=60, now=now) == pytest.approx(now + 10)
    long = {"access_token": "a", "expires_in": 3600, "expires_at": now + 3600}
    assert refresh_at(long, leeway=60, now=now) == pytest.approx(now + 3540)
    assert refresh_at({"access_token": "a"}, leeway=60) is None
