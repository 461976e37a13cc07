"""The interface every shared store implements.

A store gives the coordinator three duties that cachelib alone does not:

* an atomic **claim** with an owner and an expiry, that exactly one process wins and that
  expires on its own when its owner dies;
* a **"sent" mark** that only the claim's owner can set, and that outlives the claim (it lasts
  as long as a result would), so a token whose leader died after sending is never taken over;
* **published values** (results, outcomes) with a time to live, readable by every process,
  also written by compare-and-set (:meth:`Store.swap`) and given a new ttl (:meth:`Store.touch`).

Values are text the extension writes (JSON, sealed). A store never unpickles anything: it
hands back the text it finds, and the caller decides whether it opens.
"""

from __future__ import annotations

import abc
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import StoreError, StoreUnavailable

#: The largest value (or owner) a store reads back: anything larger reads as garbage.
MAX_VALUE_BYTES = 4 * 1024 * 1024
#: The owner of a claim or mark too large to read: it still names *somebody*, never "free".
OVERSIZED = "<too large to read>"

_C = TypeVar("_C")
_T = TypeVar("_T")


def check_ttl(ttl: float) -> float:
    """``ttl`` as a float; ValueError unless it is a positive finite number of seconds.

    (A ttl of 0 means "never expires" to cachelib and memcached: it must never slip through.)
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl):
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    if ttl <= 0:
        raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
    return float(ttl)


def check_text(value: object) -> str:
    """``value`` itself; TypeError unless it is text (``str``), as every stored value is."""
    if not isinstance(value, str):
        raise TypeError(f"values are text, not {type(value).__name__}")
    return value


def owner_text(raw: object) -> str | None:
    """A claim's or mark's owner as a server returns it: None when absent.

    Anything else names *somebody*, so a claim is never mistaken for free: bytes that are not
    UTF-8 are decoded with replacement characters; :data:`OVERSIZED` stays as it is.
    """
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(raw)


def value_text(raw: object) -> str | None:
    """A published value as a server returns it: strict UTF-8 text, else None."""
    if not isinstance(raw, (bytes, bytearray)):
        return None
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


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
    #: A value or record larger than this many bytes reads as None (absent), like garbage.
    max_value_bytes: int = MAX_VALUE_BYTES
    #: Polling :meth:`wait_for`: the first pause between reads, in seconds; it doubles up to
    #: :attr:`poll_max`. A waiter wakes at most ``poll_max`` after the value lands, and reads
    #: about ``1 / poll_max`` times a second while it waits (100 for 10 ms).
    poll_first: float = 0.001
    poll_max: float = 0.01

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

    def publish(self, key: str, value: str, ttl: float) -> None:
        """Store ``value`` under ``key`` for ``ttl`` seconds (overwrites).

        ValueError unless ``ttl`` is a positive number of seconds, TypeError unless ``value``
        is text; then the backend's :meth:`_publish` writes it.
        """
        seconds = check_ttl(ttl)
        self._publish(key, check_text(value), seconds)

    @abc.abstractmethod
    def _publish(self, key: str, value: str, ttl: float) -> None:
        """Write ``value`` (text) under ``key`` for ``ttl`` (a positive float) seconds."""

    def swap(self, key: str, expected: str | None, value: str, ttl: float) -> bool:
        """Compare-and-set: store ``value`` under ``key`` for ``ttl`` seconds only if the text
        there now is exactly ``expected`` (with ``expected=None``: only if nothing is there);
        True when this call wrote, False when it changed nothing.

        Atomic across every user of the store. A value written this way is read back by
        :meth:`read` (and replaced by :meth:`publish`, removed by :meth:`forget`) like any
        other. ``expected=None`` wants the key *absent*: a value that is there but reads as
        None (too large, not text) is not absent on a server (Redis, memcached) until it
        expires or is forgotten; the file store removes such records when it meets them.

        A write whose answer was lost is settled by reading back: ``value`` there means this
        call wrote it (True), anything else raises :class:`StoreUnavailable`.

        ValueError unless ``ttl`` is a positive number of seconds, TypeError unless ``value``
        is text and ``expected`` text or None; then the backend's :meth:`_swap` runs.
        """
        seconds = check_ttl(ttl)
        check_text(value)
        if expected is not None:
            check_text(expected)
        return self._swap(key, expected, value, seconds)

    @abc.abstractmethod
    def _swap(self, key: str, expected: str | None, value: str, ttl: float) -> bool:
        """:meth:`swap` with its arguments checked (``ttl`` a positive float)."""

    def touch(self, key: str, ttl: float) -> bool:
        """Give the value under ``key`` a new ttl of ``ttl`` seconds from now (True); nothing
        when no value is there (False). ValueError unless ``ttl`` is a positive number."""
        return self._touch(key, check_ttl(ttl))

    @abc.abstractmethod
    def _touch(self, key: str, ttl: float) -> bool:
        """:meth:`touch` with ``ttl`` checked (a positive float)."""

    @abc.abstractmethod
    def read(self, key: str) -> str | None:
        """The text under ``key``, or None when absent, expired, not text or too large."""

    @abc.abstractmethod
    def forget(self, key: str) -> None:
        """Remove the value under ``key``, if any: a later ``swap(key, None, ...)`` wins."""

    def ping(self) -> None:  # noqa: B027 - the in-process store is always there
        """Raise :class:`StoreUnavailable` when the store cannot be reached; cheap, no writes.

        Nothing to do by default: an in-process store is always there.
        """

    def wait_for(self, key: str, timeout: float) -> str | None:
        """Wait up to ``timeout`` seconds for a value under ``key``: the value, or None.

        By default this polls :meth:`read`, every :attr:`poll_first` seconds doubling to
        :attr:`poll_max`. Backends with a notification mechanism override it to wake sooner.
        """
        return self._read_until(key, time.monotonic() + max(0.0, timeout))

    def _read_until(
        self, key: str, end: float, pause: Callable[[float], str | bool] | None = None
    ) -> str | None:
        """Read ``key`` until there is a value or the monotonic time ``end`` passes: the value,
        or None.

        Between reads, ``pause(seconds_left)`` waits for a sign of the value and returns the
        value itself (taken as it is, not read), True (read again) or False (no more signs
        will come: poll from now on). Without ``pause``, this polls (see :meth:`wait_for`).
        """
        delay = self.poll_first

        def poll(left: float) -> bool:
            nonlocal delay
            time.sleep(min(delay, left))
            delay = min(delay * 2, self.poll_max)
            return True

        wait = pause or poll
        while True:
            value = self.read(key)
            if value is not None:
                return value
            left = end - time.monotonic()
            if left <= 0:
                return None
            sign = wait(left)
            if isinstance(sign, str):
                return sign
            if not sign:
                wait = poll

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


class ServerStore(Store, Generic[_C]):
    """A store on a server that forgets everything when it restarts (Redis, Memcached).

    It owns the client, one per process: made lazily by :meth:`_connect`, and made again in a
    forked child, where the parent's is kept (never used, never closed: its locks and sockets
    are the parent's) rather than collected. Every call goes through :meth:`_call`, which maps
    the client's errors: :attr:`_unreachable` -> :class:`StoreUnavailable` (the server could
    not be reached or did not answer in time: a write may or may not have happened), any other
    error of :attr:`_client_error` -> :class:`StoreError` (the server refused: nothing was
    written).

    Subclasses read the server's identity and uptime in :meth:`_read_server`; this caches the
    pair for ``identity_ttl`` seconds, so the two questions cost one round trip.

    :param server_name: the server's name in messages.
    :param connect_timeout: seconds to open a connection.
    :param timeout: seconds to wait for any answer; past it the store is unavailable.
    :param identity_ttl: seconds :meth:`identity` and :meth:`uptime` reuse what they last read.
    """

    #: Client errors that mean "unreachable, or no answer in time".
    _unreachable: tuple[type[BaseException], ...] = (OSError,)
    #: The base class of the client's other errors (the server refused).
    _client_error: type[BaseException] = OSError

    def __init__(
        self,
        server_name: str,
        *,
        connect_timeout: float = 0.5,
        timeout: float = 0.5,
        identity_ttl: float = 0.05,
    ) -> None:
        self.server_name = server_name
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.identity_ttl = identity_ttl
        self._lock = threading.Lock()
        self._client: tuple[int, _C] | None = None  # (pid of its process, client)
        self._orphans: list[_C] = []
        self._server_state: tuple[str | None, float | None, float] | None = None

    # -- the client, per process -----------------------------------------------------------

    @abc.abstractmethod
    def _connect(self) -> _C:
        """A new client for this process (it may connect lazily)."""

    @abc.abstractmethod
    def _disconnect(self, client: _C) -> None:
        """Close ``client``, made by this process."""

    @abc.abstractmethod
    def _ping(self, client: _C) -> None:
        """One cheap round trip to the server."""

    @abc.abstractmethod
    def _read_server(self) -> tuple[str | None, float | None]:
        """The server's identity and uptime in seconds (None where it will not say)."""

    def _connection(self) -> _C:
        """This process's client; a forked child makes its own."""
        pid = os.getpid()
        current = self._client
        if current is not None and current[0] == pid:
            return current[1]
        with self._lock:
            current = self._client
            if current is None or current[0] != pid:
                if current is not None:
                    self._orphans.append(current[1])
                self._server_state = None
                current = (pid, self._connect())
                self._client = current
            return current[1]

    def close(self) -> None:
        with self._lock:
            current, self._client = self._client, None
        if current is not None and current[0] == os.getpid():
            self._disconnect(current[1])

    # -- errors ------------------------------------------------------------------------------

    def _call(self, fn: Callable[[_C], _T]) -> _T:
        """``fn(client)``, its errors mapped to :class:`StoreUnavailable` or :class:`StoreError`."""
        client = self._connection()
        try:
            return fn(client)
        except self._unreachable as exc:
            raise self._unavailable(exc) from exc
        except self._client_error as exc:
            raise self._refused(exc) from exc

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"{self.server_name} unreachable: {type(exc).__name__}: {exc}")

    def _refused(self, exc: BaseException) -> StoreError:
        return StoreError(f"{self.server_name} refused: {type(exc).__name__}: {exc}")

    def _settle(
        self,
        write: Callable[[_C], bool],
        landed: Callable[[_C], bool],
        *,
        raise_unless_landed: bool = False,
    ) -> bool:
        """``write``'s answer, or, when that answer was lost (unreachable), whether ``landed``
        reads back that the write happened.

        A write that did not land (or not yet: a queued command may still run) gives False, or
        with ``raise_unless_landed`` the first error. If the read-back fails too, the first
        error is raised. Either way as :class:`StoreUnavailable`.
        """
        try:
            return self._call(write)
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, self._unreachable):
                raise  # refused, though the server is down for us (a read-only replica)
            first = exc
        try:
            if self._call(landed):
                return True
        except StoreUnavailable:
            raise first from first.__cause__
        if raise_unless_landed:
            raise first from first.__cause__
        return False

    # -- the server --------------------------------------------------------------------------

    def ping(self) -> None:
        self._call(self._ping)

    def _server_info(self, read: Callable[[_C], _T]) -> _T | None:
        """``read(client)`` for :meth:`_read_server`; None when the server refuses to say (a
        proxy, an ACL: restarts cannot be noticed)."""
        try:
            return self._call(read)
        except StoreUnavailable:
            raise
        except StoreError:
            return None

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
