"""The in-process store: private to its process, always reachable."""

from __future__ import annotations

import pytest

from flask_tokenguard.stores.memory import MemoryStore


def test_memory_store_is_not_shared() -> None:
    assert MemoryStore.shared is False
    one, two = MemoryStore(), MemoryStore()
    assert one.claim("k", "alice", 5)
    assert two.claim("k", "bob", 5), "each instance (each process) has its own claims"


def test_memory_store_checks_what_it_publishes() -> None:
    """The checks of :meth:`Store.publish` run before the backend's ``_publish``."""
    store = MemoryStore()
    with pytest.raises(ValueError, match="ttl"):
        store.publish("k", "v", 0)
    with pytest.raises(TypeError, match="text"):
        store.publish("k", b"v", 5)  # type: ignore[arg-type]
    assert store.read("k") is None
    store.ping()  # nothing to reach: never raises
