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

Published values are stored as UTF-8 text (``SET key value EX seconds``: a ttl is rounded up to
the next second) and read back by decoding, never by pickle (cachelib's ``RedisSerializer``,
whose ``RedisCache`` removes them, unpickles anything that starts with ``!``).
:meth:`swap` (compare-and-set) is a Lua script, ``GET``, compare, ``SET ... PX``, in one round
trip; :meth:`touch` is ``PEXPIRE``. Both count in milliseconds.

Reads are capped: a Lua script checks ``STRLEN`` before ``GET``, in the same round trip, so a
value (or owner) larger than :attr:`~flask_tokenguard.stores.base.Store.max_value_bytes` is
never sent over the wire; it reads as None (an owner: as somebody, never "free").

:meth:`publish` also PUBLISHes the value itself on a channel named after the key (the SET and
the PUBLISH go in one pipelined round trip), and :meth:`wait_for` subscribes to that channel,
so a waiter in any process adopts the value from the message, with no read of its own. One
pub/sub connection per process, read by one daemon thread, serves every waiter of the process:
it subscribes to a key's channel while somebody waits for it and wakes that key's waiters (a
``threading.Event`` each). A waiter reads the value only once its subscription is confirmed, so
a publish cannot slip in between; it re-reads every :attr:`RedisStore.reread_interval` seconds
in case a message is lost. A message is ``=<db>:`` and the value's bytes (channels span every
database of the server); any other message (an older version's ``1``, a value over the read
cap, another database's value) only wakes the waiter, which then reads.
Where an ACL or a proxy refuses pub/sub, waiters poll.

The client (with its pub/sub connection and thread) is created lazily and again in a forked
child (``os.getpid()`` changes), so an app loaded before gunicorn forks (``--preload``) never
shares a socket between workers.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from cachelib.redis import RedisCache
from cachelib.serializers import RedisSerializer
from redis.backoff import NoBackoff
from redis.client import PubSub
from redis.commands.core import Script
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..errors import StoreError, StoreUnavailable
from .base import OVERSIZED, ClaimInfo, ServerStore, check_ttl, owner_text, value_text
from .uri import redact

#: Database numbers accepted in a URL: Redis's default ``databases 16``.
MAX_DB = 15

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

# KEYS: the keys to read; ARGV[1] the largest value returned. One larger comes back as 0.
_READ = """
local found = {}
for i, key in ipairs(KEYS) do
    if redis.call('STRLEN', key) > tonumber(ARGV[1]) then
        found[i] = 0
    else
        found[i] = redis.call('GET', key)
    end
end
return found
"""

# KEYS[1] the value's key; ARGV[1] the new value, ARGV[2] its ttl in ms, ARGV[3] the largest
# value read, ARGV[4] '1' when the value must be ARGV[5], '0' when the key must be absent.
# A value larger than the cap reads as absent (None) but is there: it matches neither.
_SWAP = """
local current = redis.call('GET', KEYS[1])
if ARGV[4] == '1' then
    if not current or #current > tonumber(ARGV[3]) or current ~= ARGV[5] then
        return 0
    end
elseif current then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

MARK_SUFFIX = ":sent"
#: A PUBLISH message that only wakes (the value is too large to carry): the waiter reads.
WAKE = b"1"


def carries(db: int) -> bytes:
    """How a PUBLISH message that carries a value of database ``db`` starts (the value's UTF-8
    bytes follow). Channels are server-wide, not per database: a waiter adopts only its own
    database's values, and takes any other message as a wake-up."""
    return b"=%d:" % db


class TextSerializer(RedisSerializer):
    """cachelib serializer for text only: UTF-8 out, strict UTF-8 in, never pickle.

    Bytes that are not UTF-8 (truncated, binary, a pickle) read back as None.
    """

    def dumps(self, value: Any, protocol: int = 0) -> bytes:
        if not isinstance(value, str):
            raise TypeError(f"values are text, not {type(value).__name__}")
        return value.encode("utf-8")

    def loads(self, value: bytes | None) -> str | None:
        return value_text(value)


def _ms(ttl: float) -> int:
    return max(1, math.ceil(check_ttl(ttl) * 1000))


def check_url(url: str) -> None:
    """ValueError unless ``url`` is a Redis URL redis-py reads, with a database Redis has."""
    path = unquote(urlsplit(url).path).replace("/", "")  # as redis-py reads the number
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"the database number must be a whole number 0-{MAX_DB}, not {path!r}")
    db = parse_url(url).get("db", 0)  # type: ignore[no-untyped-call]
    if not isinstance(db, int) or not 0 <= db <= MAX_DB:
        raise ValueError(f"the database number must be a whole number 0-{MAX_DB}, not {db!r}")


class _Waiter:
    """One :meth:`RedisStore.wait_for` call: set when a message for its key arrives."""

    __slots__ = ("event", "message")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.message: bytes | None = None


class Subscriber:
    """One pub/sub connection of this process, read by one daemon thread.

    :meth:`join` subscribes to a channel for its first waiter (and :meth:`leave` unsubscribes
    after its last); the thread hands every message to the waiters of its channel and counts
    the confirmations, so :meth:`confirmed` tells a waiter when its SUBSCRIBE has taken effect.
    Any error on the connection (an ACL that refuses SUBSCRIBE, a lost connection) ends the
    subscriber: :attr:`failure` is set and every waiter woken; the next wait makes a new one.
    """

    #: Seconds the thread waits for a message before it looks at :meth:`close` again.
    idle = 0.2

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        self._cond = threading.Condition(threading.Lock())
        self._waiters: dict[bytes, set[_Waiter]] = {}
        # per channel: SUBSCRIBEs sent, and how many of them the server confirmed
        self._sent: dict[bytes, int] = {}
        self._acked: dict[bytes, int] = {}
        self._thread: threading.Thread | None = None
        self._closing = False
        self.failure: BaseException | None = None

    def join(self, channel: bytes) -> tuple[_Waiter, int] | None:
        """A waiter on ``channel``, and the number :meth:`confirmed` waits for; None when the
        subscriber has failed (a SUBSCRIBE that cannot be sent raises)."""
        waiter = _Waiter()
        with self._cond:
            if self.failure is not None:
                return None
            waiters = self._waiters.get(channel)
            if not waiters:
                try:
                    self._pubsub.execute_command("SUBSCRIBE", channel)  # type: ignore[no-untyped-call]
                except BaseException as exc:
                    self._fail(exc)
                    raise
                self._sent[channel] = self._sent.get(channel, 0) + 1
                waiters = self._waiters[channel] = set()
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="tokenguard-redis-wakeups", daemon=True
                    )
                    self._thread.start()
            waiters.add(waiter)
            return waiter, self._sent[channel]

    def confirmed(self, channel: bytes, ticket: int, timeout: float) -> bool:
        """True once the server confirmed SUBSCRIBE number ``ticket`` of ``channel`` (or the
        subscriber failed); False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.failure is not None or self._acked.get(channel, 0) >= ticket,
                timeout,
            )

    def leave(self, channel: bytes, waiter: _Waiter) -> None:
        """``waiter`` is done; the last one of ``channel`` unsubscribes."""
        with self._cond:
            waiters = self._waiters.get(channel)
            if waiters is None:
                return
            waiters.discard(waiter)
            if waiters:
                return
            del self._waiters[channel]
            if self.failure is None:
                try:
                    self._pubsub.execute_command(  # type: ignore[no-untyped-call]
                        "UNSUBSCRIBE", channel
                    )
                except (RedisError, OSError) as exc:
                    self._fail(exc)
            self._tidy(channel)

    def close(self) -> None:
        """Stop the thread (it closes the connection) and wake every waiter."""
        with self._cond:
            self._closing = True
            thread = self._thread
        if thread is None:
            self._pubsub.close()
        elif thread is not threading.current_thread():
            thread.join(self.idle * 5)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                response = self._pubsub.parse_response(  # type: ignore[no-untyped-call]
                    block=False, timeout=self.idle
                )
                if isinstance(response, list) and len(response) == 3:
                    self._dispatch(*response)
        except Exception as exc:  # any error ends the subscriber
            with self._cond:
                self._fail(exc)
        finally:
            with self._cond:
                if self.failure is None:
                    self._fail(ConnectionError("the subscriber was closed"))
            self._pubsub.close()

    def _dispatch(self, kind: object, channel: object, data: object) -> None:
        if not isinstance(channel, bytes):
            return
        with self._cond:
            if kind == b"message" and isinstance(data, bytes):
                for waiter in self._waiters.get(channel, ()):
                    waiter.message = data
                    waiter.event.set()
            elif kind == b"subscribe":
                self._acked[channel] = self._acked.get(channel, 0) + 1
                self._tidy(channel)
                self._cond.notify_all()

    # -- with the lock held ------------------------------------------------------------------

    def _tidy(self, channel: bytes) -> None:
        """Forget ``channel``'s counts once nobody waits and every SUBSCRIBE is confirmed."""
        if channel not in self._waiters and self._acked.get(channel) == self._sent.get(channel):
            self._acked.pop(channel, None)
            self._sent.pop(channel, None)

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.event.set()
        self._cond.notify_all()


@dataclass
class _Conn:
    """Everything bound to one redis-py client, owned by one process."""

    client: redis.Redis
    cache: RedisCache
    release: Script
    mark: Script
    read: Script
    swap: Script
    #: the pub/sub connection of this process's waiters, made on first use
    subscriber: Subscriber | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wakeups(self) -> Subscriber:
        """This client's subscriber; a new one when the last failed."""
        with self.lock:
            current = self.subscriber
            if current is None or current.failure is not None:
                current = self.subscriber = Subscriber(self.client.pubsub())  # type: ignore[no-untyped-call]
            return current


class RedisStore(ServerStore[_Conn]):
    """A store on one Redis server (see the module docstring for what it guarantees).

    :param url: ``redis://[[user]:password@]host:port/db`` or ``rediss://...``.
    :param notify: publish a wake-up on the value's channel, so :meth:`wait_for` returns at once.
    :param client_options: more keyword arguments for the connections (as
        ``redis.Redis.from_url`` takes them).
    :param max_connections: connections per process. The pool blocks a thread that finds them
        all busy (up to ``pool_timeout`` seconds) instead of failing, as redis-py's default pool
        does past 100: a burst of many threads in one worker queues for a connection.
    :param pool_timeout: seconds a thread waits for a free connection, then the store is
        unavailable.
    :param timeouts: ``connect_timeout``, ``timeout``, ``identity_ttl``, as for
        :class:`~flask_tokenguard.stores.base.ServerStore`.
    """

    #: "Redis could not be reached or did not answer in time": a write may or may not have run.
    _unreachable = (RedisConnectionError, RedisTimeoutError, OSError)
    _client_error = RedisError
    #: Seconds between re-reads while :meth:`wait_for` waits for a wake-up, in case one is lost.
    reread_interval = 0.25

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        notify: bool = True,
        client_options: dict[str, Any] | None = None,
        max_connections: int = 64,
        pool_timeout: float = 2.0,
        **timeouts: float,
    ) -> None:
        check_url(url)  # a bad URL fails now, not on first use
        super().__init__("Redis", **timeouts)
        self.url = url
        self.notify = notify
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._options = dict(client_options or {})
        db = self._options.get("db", parse_url(url).get("db", 0))  # type: ignore[no-untyped-call]
        self._carries = carries(int(db or 0))

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStore:
        """A store for ``redis://`` or ``rediss://`` ``url``; ``options`` as for the constructor."""
        return cls(url, **options)

    # -- the client, per process -----------------------------------------------------------

    def _new_client(self) -> redis.Redis:
        options: dict[str, Any] = {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.timeout,
            # No hidden retries: one attempt, then the caller decides. (retry_on_timeout
            # defaults to False; passing it is deprecated in redis-py 6+.)
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            **self._options,
        }
        options["decode_responses"] = False  # values are checked as bytes, then decoded
        pool = redis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=self.max_connections,
            timeout=self.pool_timeout,
            **options,
        )
        return redis.Redis(connection_pool=pool)

    def _connect(self) -> _Conn:
        client = self._new_client()
        cache = RedisCache(host=client, default_timeout=300)
        cache.serializer = TextSerializer()
        return _Conn(
            client=client,
            cache=cache,
            release=client.register_script(_RELEASE),
            mark=client.register_script(_MARK),
            read=client.register_script(_READ),
            swap=client.register_script(_SWAP),
        )

    def _disconnect(self, client: _Conn) -> None:
        with client.lock:
            subscriber, client.subscriber = client.subscriber, None
        if subscriber is not None:
            subscriber.close()
        client.client.close()

    def _ping(self, client: _Conn) -> None:
        client.client.ping()

    def _refused(self, exc: BaseException) -> StoreError:
        """Redis answered with an error: nothing was written."""
        if isinstance(exc, ReadOnlyError):  # a replica (e.g. mid-failover): not usable now
            return StoreUnavailable(f"Redis is read-only: {exc}")
        return super()._refused(exc)

    def _get(self, conn: _Conn, *keys: str) -> list[Any]:
        """The raw values of ``keys`` (None when absent, :data:`OVERSIZED` when too large)."""
        found = conn.read(keys=list(keys), args=[self.max_value_bytes])
        return [OVERSIZED if raw == 0 else raw for raw in found]

    # -- Store ------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        px = _ms(ttl)
        # A SET whose answer was lost may or may not have run: our owner there means we won.
        return self._settle(
            lambda c: bool(c.client.set(key, owner, nx=True, px=px)),
            lambda c: owner_text(c.client.get(key)) == owner,
        )

    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        px = _ms(ttl)
        mark = key + MARK_SUFFIX
        return self._settle(
            lambda c: bool(c.mark(keys=[key, mark], args=[owner, px])),
            lambda c: owner_text(c.client.get(mark)) == owner,
            raise_unless_landed=True,
        )

    def read_claim(self, key: str) -> ClaimInfo:
        owner, mark = self._call(lambda c: self._get(c, key, key + MARK_SUFFIX))
        return ClaimInfo(owner=owner_text(owner), sent_by=owner_text(mark))

    def release(self, key: str, owner: str) -> bool:
        return bool(self._call(lambda c: c.release(keys=[key], args=[owner])))

    def _publish(self, key: str, value: str, ttl: float) -> None:
        seconds, data = math.ceil(ttl), value.encode("utf-8")

        def run(conn: _Conn) -> None:
            pipe = conn.client.pipeline(transaction=False)
            pipe.set(key, data, ex=seconds)
            if self.notify:
                pipe.publish(
                    key, self._carries + data if len(data) <= self.max_value_bytes else WAKE
                )
            # A refused PUBLISH (an ACL) is no failure: waiters re-read now and then anyway.
            stored = pipe.execute(raise_on_error=False)[0]
            if isinstance(stored, BaseException):
                raise stored

        self._call(run)

    def _swap(self, key: str, expected: str | None, value: str, ttl: float) -> bool:
        args: list[str | int] = [value, _ms(ttl), self.max_value_bytes]
        args += ["0"] if expected is None else ["1", expected]
        # A script whose answer was lost may or may not have run: ours if it reads back so.
        return self._settle(
            lambda c: bool(c.swap(keys=[key], args=args)),
            lambda c: value_text(c.client.get(key)) == value,
            raise_unless_landed=True,
        )

    def _touch(self, key: str, ttl: float) -> bool:
        px = _ms(ttl)
        return bool(self._call(lambda c: c.client.pexpire(key, px)))

    def read(self, key: str) -> str | None:
        return value_text(self._call(lambda c: self._get(c, key)[0]))

    def forget(self, key: str) -> None:
        self._call(lambda c: c.cache.delete(key))

    def wait_for(self, key: str, timeout: float) -> str | None:
        """Subscribe to ``key``'s channel, then read: the value comes with :meth:`publish`'s
        message, so a waiter adopts it without reading it.

        The subscription is confirmed before the first read, so a publish cannot slip in
        between; the value is also re-read every :attr:`reread_interval` seconds in case a
        message was lost. Where pub/sub is refused or its connection fails, this polls.
        """
        if not self.notify:
            return super().wait_for(key, timeout)
        end = time.monotonic() + max(0.0, timeout)
        value = self.read(key)  # the common case needs no subscription
        if value is not None or timeout <= 0:
            return value
        channel = key.encode("utf-8")
        subscriber = self._call(lambda c: c.wakeups())
        try:
            joined = self._call(lambda c: subscriber.join(channel))
        except StoreUnavailable:
            raise
        except StoreError as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise
            joined = None  # refused at once
        if joined is None:  # pub/sub refused, or the subscriber failed just now: poll
            return super().wait_for(key, end - time.monotonic())
        waiter, ticket = joined
        try:
            return self._wait_subscribed(subscriber, waiter, ticket, key, end)
        finally:
            subscriber.leave(channel, waiter)

    def _wait_subscribed(
        self, subscriber: Subscriber, waiter: _Waiter, ticket: int, key: str, end: float
    ) -> str | None:
        channel = key.encode("utf-8")
        # Only once the subscription is confirmed can no publish be missed by the read below.
        subscriber.confirmed(channel, ticket, min(self.timeout, max(0.0, end - time.monotonic())))

        def pause(left: float) -> str | bool:
            # False: pub/sub refused (an ACL without it, a proxy) or its connection lost: poll.
            if subscriber.failure is not None:
                return False
            if not waiter.event.wait(min(left, self.reread_interval)):
                return True  # the safety net: read again
            waiter.event.clear()
            return subscriber.failure is None and (self._carried(waiter.message) or True)

        return self._read_until(key, end, pause)

    def _carried(self, message: bytes | None) -> str | None:
        """The value a PUBLISH message carries; None for a bare wake-up (or garbage)."""
        if message is None or not message.startswith(self._carries):
            return None
        if len(message) > self.max_value_bytes + len(self._carries):
            return None
        return value_text(message[len(self._carries) :])

    def _read_server(self) -> tuple[str | None, float | None]:
        """``run_id`` (new on every restart) and ``uptime_in_seconds``, from ``INFO server``."""
        info = self._server_info(lambda c: c.client.info("server"))
        if not isinstance(info, dict):
            return None, None
        uptime = info.get("uptime_in_seconds")
        return owner_text(info.get("run_id")), (
            float(uptime) if isinstance(uptime, (int, float)) else None
        )

    def __repr__(self) -> str:
        return f"RedisStore({redact(self.url)!r})"
