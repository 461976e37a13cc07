"""The coordinator as a plain class: no Flask, the real provider, an in-memory store.

docs/design.md, "The protocol".
"""

from __future__ import annotations

import threading
import time

import pytest

from flask_tokenguard.deadline import Deadline
from flask_tokenguard.errors import OutcomeUnknown, RefreshTimeout
from flask_tokenguard.stores.memory import MemoryStore

from .fixtures.provider import coordinator_for


@pytest.fixture
def coordinator(provider):
    def make(**policy):
        return coordinator_for(provider, **policy)

    return make


def test_a_waiter_whose_deadline_passes_gets_its_own_error(provider, coordinator):
    provider.set_faults(refresh_delay=1.5)
    guard = coordinator()
    token = provider.issue(expires_in=0)
    leader = threading.Thread(target=lambda: guard.refresh(token, Deadline(10)))
    leader.start()
    while len(guard.flights) == 0:
        time.sleep(0.005)
    with pytest.raises(RefreshTimeout):
        guard.refresh(token, Deadline(0.3))
    leader.join()
    assert len(guard.flights) == 0
    assert provider.stats()["refreshes"] == 1


def test_late_arrivals_follow_the_chain_without_calling_the_provider(provider, coordinator):
    guard = coordinator()
    rt0 = provider.issue(expires_in=0)
    rt1, called = guard.refresh(rt0, Deadline(5))
    assert called
    rt2, called = guard.refresh(rt1, Deadline(5))
    assert called
    newest, called = guard.refresh(rt0, Deadline(5))
    assert not called
    assert newest["refresh_token"] == rt2["refresh_token"]
    assert provider.stats()["refreshes"] == 2
    assert provider.stats()["max_presentations"] == 1


def test_a_refresh_that_outlives_its_deadline_is_published_when_it_lands(provider, coordinator):
    """Abandoned as ambiguous at the deadline; the late success still heals later requests."""
    provider.set_faults(hang=1, hang_seconds=4)
    guard = coordinator(provider_timeout=6, claim_ttl=7)
    token = provider.issue(expires_in=0)
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown):
        guard.refresh(token, Deadline(1.0))  # this request cannot wait for the provider
    # The request's deadline (1 s), not the provider's pace (4 s); generous for a loaded machine.
    assert time.monotonic() - started < 3
    end = time.monotonic() + 15
    while guard.newest(token["refresh_token"]) is None:  # the provider answers meanwhile
        assert time.monotonic() < end, "the late answer was never published"
        time.sleep(0.05)
    healed, called = guard.refresh(token, Deadline(5))
    assert not called
    assert provider.userinfo(healed["access_token"]).status_code == 200
    assert provider.presentations(token["refresh_token"]) == 1


def test_the_signal_callback_runs_once_in_the_leader(provider, coordinator):
    provider.set_faults(refresh_delay=0.3)
    guard = coordinator()
    token = provider.issue(expires_in=0)
    seen = []
    threads = [
        threading.Thread(
            target=lambda: guard.refresh(token, Deadline(5), lambda t, e: seen.append((t, e)))
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 1
    assert seen[0][1] is None


def test_a_sent_mark_whose_answer_was_lost_is_settled_by_reading_it_back(provider):
    """An odd edge, so a store double: the mark lands, the answer does not."""
    from flask_tokenguard.errors import StoreUnavailable

    class LostAnswer(MemoryStore):
        def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
            super().mark_sent(key, owner, ttl)
            raise StoreUnavailable("timed out reading the answer")

    guard = coordinator_for(provider, LostAnswer())
    token = provider.issue(expires_in=0)
    new, called = guard.refresh(token, Deadline(5))
    assert called
    assert provider.userinfo(new["access_token"]).status_code == 200
    assert provider.presentations(token["refresh_token"]) == 1
