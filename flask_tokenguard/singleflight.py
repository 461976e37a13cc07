"""Single flight inside one process: concurrent callers with one key share one call.

A per-key map of ``threading.Event`` entries. The first caller of a key is the leader and
runs the function; every other caller waits on the event, bounded by its own timeout, and
receives the same value or the same error. The entry is removed when the flight ends, so
the map is empty after any burst; a caller that arrives later starts a new flight (the
coordinator then finds the published result instead of calling the provider again).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class FlightTimeout(Exception):
    """A waiter's timeout passed before the leader finished."""


class _Flight(Generic[T]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """The per-key map. Nothing here knows about Flask, tokens or stores."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[T]] = {}

    def run(self, key: str, fn: Callable[[], T], timeout: float) -> tuple[T, bool]:
        """``fn()``'s value and whether this caller led (ran ``fn``).

        Raises what ``fn`` raised (a copy, for waiters: one exception object must not be
        raised in several threads at once), or :class:`FlightTimeout` for a waiter whose
        ``timeout`` passed first. The leader is never cut short: ``fn`` bounds itself.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if leader:
            try:
                flight.value = fn()
            except BaseException as exc:
                flight.error = exc
                raise
            finally:
                with self._lock:
                    del self._flights[key]
                flight.done.set()
            return flight.value, True
        if not flight.done.wait(timeout):
            raise FlightTimeout(f"waited {timeout:.3f}s for a refresh in flight")
        if flight.error is not None:
            raise copy.copy(flight.error).with_traceback(None) from None
        return flight.value, False  # type: ignore[return-value]

    def __len__(self) -> int:
        """Flights in progress (0 after every burst)."""
        with self._lock:
            return len(self._flights)
