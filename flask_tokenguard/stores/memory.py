"""``simple://``: a store inside one process.

Guarantees: claims, marks and values are exact across the threads of **one process** (one
``threading.Condition`` guards them all) and nothing else: every process has its own store, so
this backend cannot stop two gunicorn workers or two hosts from refreshing the same token.
Expiries run on ``time.monotonic()``, so wall-clock jumps do not move them.

A stalled (SIGSTOP) holder is a thread of this process, so the whole process is stopped with
it; a stuck thread keeps its claim until the claim's ttl passes, then another thread may take
over. When the process dies (SIGKILL), the store dies with it: there is nobody left to wait.

Why not cachelib's ``SimpleCache``: it pickles values (``SimpleSerializer``), keeps expiries as
whole wall-clock seconds (``int(time()) + timeout``, so a 1 s entry may live 0 s; float timeouts
are deprecated), and cannot notify waiters. Values here are the ``str`` objects themselves in a
dict: nothing is serialised, so nothing can be unpickled.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .base import ClaimInfo, Store, check_ttl

#: Expired entries are swept after this many writes (reads drop the ones they meet).
_SWEEP_EVERY = 256


class MemoryStore(Store):
    """Claims, "sent" marks and values in dicts of this process (see the module docstring)."""

    shared = False

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        # key -> (owner or value, monotonic deadline)
        self._claims: dict[str, tuple[str, float]] = {}
        self._marks: dict[str, tuple[str, float]] = {}
        self._values: dict[str, tuple[str, float]] = {}
        self._writes = 0

    # -- helpers (call with self._cond held) -------------------------------------------------

    @staticmethod
    def _live(table: dict[str, tuple[str, float]], key: str, now: float) -> str | None:
        entry = table.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del table[key]
            return None
        return entry[0]

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            for table in (self._claims, self._marks, self._values):
                for key in [k for k, (_, end) in table.items() if end <= now]:
                    del table[key]

    # -- Store ------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        ttl = check_ttl(ttl)
        with self._cond:
            now = time.monotonic()
            if self._live(self._claims, key, now) is not None:
                return False
            self._claims[key] = (owner, now + ttl)
            self._wrote(now)
            return True

    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        ttl = check_ttl(ttl)
        with self._cond:
            now = time.monotonic()
            if self._live(self._claims, key, now) != owner:
                return False
            self._marks[key] = (owner, now + ttl)
            self._wrote(now)
            return True

    def read_claim(self, key: str) -> ClaimInfo:
        with self._cond:
            now = time.monotonic()
            return ClaimInfo(
                owner=self._live(self._claims, key, now),
                sent_by=self._live(self._marks, key, now),
            )

    def release(self, key: str, owner: str) -> bool:
        with self._cond:
            if self._live(self._claims, key, time.monotonic()) != owner:
                return False
            del self._claims[key]
            return True

    def _publish(self, key: str, value: str, ttl: float) -> None:
        self._update(key, ttl, lambda _current: value)

    def _swap(self, key: str, expected: str | None, value: str, ttl: float) -> bool:
        return self._update(key, ttl, lambda current: value if current == expected else None)

    def _touch(self, key: str, ttl: float) -> bool:
        return self._update(key, ttl, lambda current: current)

    def _update(self, key: str, ttl: float, change: Callable[[str | None], str | None]) -> bool:
        """Under the lock: ``change`` the live value (None when absent) into a new one, kept
        ``ttl`` seconds from now (waiters woken); False when ``change`` gave None."""
        with self._cond:
            now = time.monotonic()
            value = change(self._live(self._values, key, now))
            if value is None:
                return False
            self._values[key] = (value, now + ttl)
            self._wrote(now)
            self._cond.notify_all()
            return True

    def read(self, key: str) -> str | None:
        with self._cond:
            value = self._live(self._values, key, time.monotonic())
        return value if isinstance(value, str) else None

    def forget(self, key: str) -> None:
        with self._cond:
            self._values.pop(key, None)

    def wait_for(self, key: str, timeout: float) -> str | None:
        """Wake as soon as :meth:`publish` runs in this process (no polling)."""
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while True:
                now = time.monotonic()
                value = self._live(self._values, key, now)
                if isinstance(value, str):
                    return value
                if now >= end:
                    return None
                self._cond.wait(end - now)
