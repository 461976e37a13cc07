"""``redis://`` and ``rediss://``: a store shared by every process and host that reaches one Redis.

Guarantees (one Redis primary, not Cluster, not a replica that may be promoted):

* **claim** is ``SET key owner NX PX ttl``: exactly one caller wins across threads, processes
  and hosts, and the claim expires on its own after ``ttl``, whatever happens to its holder.
* **mark_sent** and **release** are Lua scripts, so "is it still mine?" and the write are one
  atomic step: a holder whose claim expired can neither mark nor release someone else's claim.
  The mark is a separate key (``key + ":sent"``) with its own ttl, so it outlives the claim.
* A stalled holder (SIGSTOP, a long GC pause) keeps its claim only until the claim's ttl; then
  another process may take over, and the stalled one, once resumed, fails ``mark_sent``. A
  holder that dies (SIGKILL) likewise frees the claim when its ttl runs out, not before.
* Expiries are Redis's wall clock: a clock jump on the Redis host moves them. A restarted Redis
  without persistence forgets every claim and mark: :meth:`identity` (``INFO server``
  ``run_id``) lets the caller notice that.

Failure handling: every socket has explicit connect and read timeouts, and redis-py's own
retries are off (``Retry(NoBackoff(), 0)``; its default retries a timed-out command with
backoff, which can make a leader lose its own ``SET NX`` and stall a request for seconds).
A connection error or timeout raises :class:`StoreUnavailable` at once. A ``SET NX`` whose
answer was lost is settled by reading the key back: our owner there means we won.

Published values go through cachelib's ``RedisCache`` on the same client, with its serializer
replaced: values are stored as UTF-8 text and read back by decoding, never by pickle
(cachelib's ``RedisSerializer`` unpickles anything that starts with ``!``). cachelib counts
expiries in whole seconds, so a value's ttl is rounded up to the next second.

:meth:`publish` also PUBLISHes a wake-up on a channel named after the key, and
:meth:`wait_for` subscribes to it (one short-lived pub/sub connection per wait), so waiters
in every process wake within milliseconds instead of on their next poll. Where an ACL or a
proxy refuses pub/sub, waiters poll.

The client is created lazily and again in a forked child (``os.getpid()`` changes), so an app
loaded before gunicorn forks (``--preload``) never shares a socket between workers.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from cachelib.redis import RedisCache
from cachelib.serializers import RedisSerializer
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..errors import StoreError, StoreUnavailable
from .base import ClaimInfo, ServerStore, check_ttl
from .uri import redact

#: Errors that mean "Redis could not be reached or did not answer in time": a write may or
#: may not have happened.
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# KEYS[1] claim key; ARGV[1] owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] claim key, KEYS[2] mark key; ARGV[1] owner, ARGV[2] mark ttl in ms.
_MARK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

MARK_SUFFIX = ":sent"

_T = TypeVar("_T")


class TextSerializer(RedisSerializer):
    """cachelib serializer for text only: UTF-8 out, strict UTF-8 in, never pickle.

    Bytes that are not UTF-8 (truncated, binary, a pickle) read back as None.
    """

    def dumps(self, value: Any, protocol: int = 0) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"values are text, not {type(value).__name__}")
        return value.encode("utf-8")

    def loads(self, value: bytes | None) -> str | None:
        if not isinstance(value, (bytes, bytearray)):
            return None
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None


def _text(raw: Any) -> str | None:
    """An owner as stored; bytes that are not UTF-8 still name *somebody* (never None)."""
    if raw is None:
        return None
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(raw)


def _ms(ttl: float) -> int:
    return max(1, math.ceil(check_ttl(ttl) * 1000))


@dataclass
class _Conn:
    """Everything bound to one redis-py client, owned by one process."""

    pid: int
    client: redis.Redis
    cache: RedisCache
    release: Script
    mark: Script


class RedisStore(ServerStore):
    """A store on one Redis server (see the module docstring for what it guarantees).

    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...``.
    :param connect_timeout: seconds to open a connection.
    :param socket_timeout: seconds to wait for any answer; past it the store is unavailable.
    :param identity_ttl: seconds :meth:`identity` reuses the ``run_id`` it last read.
    :param notify: publish a wake-up on the value's channel, so :meth:`wait_for` returns at once.
    :param client_options: more keyword arguments for ``redis.Redis.from_url``.
    """

    shared = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        connect_timeout: float = 0.5,
        socket_timeout: float = 0.5,
        identity_ttl: float = 0.05,
        notify: bool = True,
        **client_options: Any,
    ) -> None:
        parse_url(url)  # type: ignore[no-untyped-call]  # a bad URL fails now, not on first use
        self.url = url
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.identity_ttl = identity_ttl
        self.notify = notify
        self._options = client_options
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        self._orphans: list[_Conn] = []
        self._server_state = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store for ``redis://`` or ``rediss://`` ``url``; ``options`` as for the constructor."""
        return cls(url, **options)

    # -- the client, per process -----------------------------------------------------------

    def _new_client(self) -> redis.Redis:
        options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.socket_timeout,
            # No hidden retries: one attempt, then the caller decides. (retry_on_timeout
            # defaults to False; passing it is deprecated in redis-py 6+.)
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **self._options,
        }
        options["decode_responses"] = False  # values are checked as bytes, then decoded
        return redis.Redis.from_url(self.url, **options)

    def _connection(self) -> _Conn:
        pid = os.getpid()
        conn = self._conn
        if conn is not None and conn.pid == pid:
            return conn
        with self._lock:
            conn = self._conn
            if conn is None or conn.pid != pid:
                if conn is not None:
                    # Inherited from the parent: its pool's locks and sockets are not ours to
                    # touch, so it is kept (never used, never closed) rather than collected.
                    self._orphans.append(conn)
                self._server_state = None
                client = self._new_client()
                cache = RedisCache(host=client, default_timeout=300)
                cache.serializer = TextSerializer()
                conn = _Conn(
                    pid=pid,
                    client=client,
                    cache=cache,
                    release=client.register_script(_RELEASE),
                    mark=client.register_script(_MARK),
                )
                self._conn = conn
            return conn

    @staticmethod
    def _unavailable(exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"Redis unreachable: {type(exc).__name__}: {exc}")

    @staticmethod
    def _refused(exc: RedisError) -> StoreError:
        """Redis answered with an error: nothing was written."""
        if isinstance(exc, ReadOnlyError):  # a replica (e.g. mid-failover): not usable now
            return StoreUnavailable(f"Redis is read-only: {exc}")
        return StoreError(f"Redis refused: {type(exc).__name__}: {exc}")

    # -- Store ------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        px = _ms(ttl)
        conn = self._connection()
        try:
            return bool(conn.client.set(key, owner, nx=True, px=px))
        except _UNREACHABLE as exc:
            first: BaseException = exc
        except RedisError as exc:
            raise self._refused(exc) from exc
        # The SET may or may not have run: settle it by reading the owner back. No owner means
        # it did not run (or already expired); another owner means we lost.
        try:
            current = conn.client.get(key)
        except _UNREACHABLE as exc:
            raise self._unavailable(first) from exc
        except RedisError as exc:
            raise self._refused(exc) from exc
        return current is not None and _text(current) == owner

    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        px = _ms(ttl)
        conn = self._connection()
        try:
            return bool(conn.mark(keys=[key, key + MARK_SUFFIX], args=[owner, px]))
        except _UNREACHABLE as exc:
            first: BaseException = exc
        except RedisError as exc:
            raise self._refused(exc) from exc
        # Lost answer: the mark is ours only if it reads back as ours.
        try:
            current = conn.client.get(key + MARK_SUFFIX)
        except _UNREACHABLE as exc:
            raise self._unavailable(first) from exc
        except RedisError as exc:
            raise self._refused(exc) from exc
        if current is not None and _text(current) == owner:
            return True
        raise self._unavailable(first)

    def read_claim(self, key: str) -> ClaimInfo:
        owner, mark = self._call(lambda c: c.client.mget([key, key + MARK_SUFFIX]))
        return ClaimInfo(owner=_text(owner), sent_by=_text(mark))

    def release(self, key: str, owner: str) -> bool:
        return bool(self._call(lambda c: c.release(keys=[key], args=[owner])))

    def publish(self, key: str, value: str, ttl: float) -> None:
        seconds = math.ceil(check_ttl(ttl))
        if not isinstance(value, str):
            raise TypeError(f"values are text, not {type(value).__name__}")

        self._call(lambda c: c.cache.set(key, value, timeout=seconds))
        if self.notify:
            # Only a wake-up: the value is stored, and waiters re-read it every 0.25 s anyway.
            with contextlib.suppress(RedisError, OSError):
                self._connection().client.publish(key, b"1")

    def read(self, key: str) -> str | None:
        value = self._call(lambda c: c.cache.get(key))
        return value if isinstance(value, str) else None

    def forget(self, key: str) -> None:
        self._call(lambda c: c.cache.delete(key))

    def wait_for(self, key: str, timeout: float) -> str | None:
        """Subscribe to ``key``'s channel, then read: wakes as soon as :meth:`publish` runs.

        The subscription is confirmed before the first read, so a publish cannot slip in
        between; the value is also re-read every 0.25 s in case a wake-up was missed.
        """
        if not self.notify:
            return super().wait_for(key, timeout)
        end = time.monotonic() + max(0.0, timeout)
        value = self.read(key)  # the common case needs no subscription
        if value is not None or timeout <= 0:
            return value
        conn = self._connection()
        try:
            pubsub = conn.client.pubsub(  # type: ignore[no-untyped-call]
                ignore_subscribe_messages=False
            )
            try:
                pubsub.subscribe(key)
                # Wait for the confirmation: only then can no publish be missed.
                confirm_by = time.monotonic() + self.socket_timeout
                while time.monotonic() < confirm_by:
                    msg = pubsub.get_message(timeout=max(0.0, confirm_by - time.monotonic()))
                    if msg is not None and msg.get("type") == "subscribe":
                        break
                while True:
                    value = conn.cache.get(key)
                    if isinstance(value, str):
                        return value
                    left = end - time.monotonic()
                    if left <= 0:
                        return None
                    pubsub.get_message(timeout=min(left, 0.25))
            finally:
                pubsub.close()
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from exc
        except RedisError as exc:
            if isinstance(exc, ReadOnlyError) or not isinstance(exc, ResponseError):
                raise self._refused(exc) from exc
        # Pub/sub refused (an ACL without it, a proxy): poll for the time that is left.
        return super().wait_for(key, end - time.monotonic())

    def _read_server(self) -> tuple[str | None, float | None]:
        """``run_id`` (new on every restart) and ``uptime_in_seconds``, from ``INFO server``."""
        try:
            info = self._call(lambda c: c.client.info("server"))
        except StoreUnavailable:
            raise
        except StoreError:
            return None, None  # INFO refused (a proxy, an ACL): restarts cannot be noticed
        if not isinstance(info, dict):
            return None, None
        uptime = info.get("uptime_in_seconds")
        return _text(info.get("run_id")), (
            float(uptime) if isinstance(uptime, (int, float)) else None
        )

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and conn.pid == os.getpid():
            conn.client.close()

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, fn: Callable[[_Conn], _T]) -> _T:
        conn = self._connection()
        try:
            return fn(conn)
        except _UNREACHABLE as exc:
            raise self._unavailable(exc) from exc
        except RedisError as exc:
            raise self._refused(exc) from exc

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r})"
