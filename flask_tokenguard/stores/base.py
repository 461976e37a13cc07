"""The interface every shared store implements.

A store gives the coordinator three duties that cachelib alone does not:

* an atomic **claim** with an owner and an expiry, that exactly one process wins and that
  expires on its own when its owner dies;
* a **"sent" mark** that only the claim's owner can set, and that outlives the claim (it lasts
  as long as a result would), so a token whose leader died after sending is never taken over;
* **published values** (results, outcomes) with a time to live, readable by every process.

Values are text the extension writes (JSON, sealed). A store never unpickles anything: it
hands back the text it finds, and the caller decides whether it opens.
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass


def check_ttl(ttl: float) -> float:
    """``ttl`` as a float; ValueError unless it is a positive finite number of seconds.

    (A ttl of 0 means "never expires" to cachelib and memcached: it must never slip through.)
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return float(ttl)


@dataclass(frozen=True)
class ClaimInfo:
    """What a store knows about a claim key."""

    #: owner of the live claim, or None when nobody holds it (never claimed, released, expired)
    owner: str | None
    #: owner that marked the claim "sent", or None; outlives the claim
    sent_by: str | None


class Store(abc.ABC):
    """One shared store.

    Every method may raise :class:`~flask_tokenguard.errors.StoreUnavailable`.
    """

    #: True when the store is shared between processes (False for ``simple://``).
    shared: bool = True

    @abc.abstractmethod
    def claim(self, key: str, owner: str, ttl: float) -> bool:
        """Atomically take ``key`` for ``owner`` for ``ttl`` seconds; True when this call won."""

    @abc.abstractmethod
    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        """Mark the claim ``key`` "sent", only if ``owner`` holds it.

        The mark lives ``ttl`` seconds, whatever becomes of the claim.
        """

    @abc.abstractmethod
    def read_claim(self, key: str) -> ClaimInfo:
        """The live owner of ``key`` and the owner of its "sent" mark, if any."""

    @abc.abstractmethod
    def release(self, key: str, owner: str) -> bool:
        """Drop the claim only if ``owner`` holds it (compare-and-delete); the mark stays."""

    @abc.abstractmethod
    def publish(self, key: str, value: str, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (overwrites)."""

    @abc.abstractmethod
    def read(self, key: str) -> str | None:
        """The text under ``key``, or None when absent, expired or not text."""

    @abc.abstractmethod
    def forget(self, key: str) -> None:
        """Remove ``key`` (a published value)."""

    def wait_for(self, key: str, timeout: float) -> str | None:
        """Wait up to ``timeout`` seconds for a value under ``key``; poll with backoff by default.

        Backends with a notification mechanism may override this to wake sooner.
        """
        end = time.monotonic() + max(0.0, timeout)
        delay = 0.002
        while True:
            value = self.read(key)
            if value is not None:
                return value
            left = end - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.02)

    def uptime(self) -> float | None:
        """Seconds since the store last lost its state (a server start); None if it never does.

        A server younger than a claim's ttl may have forgotten claims that are still held, so
        the coordinator treats claims as held until it is older (Redis, Memcached).
        """
        return None

    def identity(self) -> str | None:
        """A value that changes when the store loses its state (Redis ``run_id``).

        None if unknown.
        """
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class ServerStore(Store):
    """A store on a server that forgets everything when it restarts (Redis, Memcached).

    Subclasses read the server's identity and uptime in :meth:`_read_server`; this caches the
    pair for ``identity_ttl`` seconds, so the two questions cost one round trip.
    """

    identity_ttl: float = 0.05
    _server_state: tuple[str | None, float | None, float] | None = None

    @abc.abstractmethod
    def _read_server(self) -> tuple[str | None, float | None]:
        """The server's identity and uptime in seconds (None where it will not say)."""

    def _server(self) -> tuple[str | None, float | None, float]:
        now = time.monotonic()
        cached = self._server_state
        if cached is not None and now - cached[2] < self.identity_ttl:
            return cached
        identity, uptime = self._read_server()
        self._server_state = (identity, uptime, now)
        return self._server_state

    def identity(self) -> str | None:
        return self._server()[0]

    def uptime(self) -> float | None:
        """The server's uptime, advanced by the time since it was read."""
        _identity, uptime, read_at = self._server()
        return None if uptime is None else uptime + (time.monotonic() - read_at)
