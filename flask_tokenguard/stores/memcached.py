"""``memcached://host:port``: a store shared by every process and host that reaches one memcached.

Guarantees (one memcached server; a client-side pool of several servers would not be atomic):

* **claim** is ``add key owner``: memcached stores it only if the key is absent, so exactly one
  caller wins across threads, processes and hosts; the claim expires on its own.
* **release** is ``gets`` + ``cas``: memcached has no compare-and-delete, so the claim is
  overwritten, only if it is unchanged since we read it as ours, by a tombstone that lives one
  second; a ``claim`` that meets a tombstone takes it over with ``cas``. No race: a claim
  someone else took in between makes the ``cas`` fail.
* **mark_sent** reads the claim (``gets``), writes the mark (a separate key, ``key + ":sent"``,
  with its own ttl, so it outlives the claim), then reads the claim again: True only if the
  claim was ours and unchanged (same cas token) on both sides of the write. The residual race:
  a holder that stalls between the checks for a whole claim ttl leaves a stray mark and gets
  False; the stray mark errs on the safe side (waiters treat the token as possibly sent).
* A stalled holder (SIGSTOP) keeps its claim until the ttl runs out, then another process may
  take over and the stalled one fails ``mark_sent``; a dead one (SIGKILL) frees it at expiry.
* TTLs: memcached counts whole seconds on a clock that ticks once a second, so an item set
  with ``n`` may live only ``n - 1`` seconds and a bit. Every ttl is therefore rounded up and
  one second added (a claim of 1 s lives 1-2 s); ttls above 30 days (which memcached would read
  as a Unix time) are capped at 30 days. The clock is memcached's own monotonic one.
* A restarted memcached forgets everything: :meth:`identity` (its pid and start time) changes.

Why not cachelib's ``MemcachedCache``: it turns every ttl into an absolute Unix time computed
on *this* host (``int(time()) + timeout``), which ties expiries to clock agreement between
hosts, and it adds nothing the client lacks. pymemcache is used directly with no serde at all:
values go out as UTF-8 bytes and come back as bytes that are decoded, never unpickled.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from ..errors import StoreError, StoreUnavailable
from .base import ClaimInfo, ServerStore, check_ttl

MARK_SUFFIX = ":sent"
#: Written over a released claim; no owner is ever this value.
TOMBSTONE = b"\x00released"
_MAX_TTL = 30 * 24 * 3600
_MAX_KEY = 200  # memcached allows 250 bytes; leave room for the mark suffix
_UNREACHABLE = (OSError, MemcacheUnexpectedCloseError)

_T = TypeVar("_T")


def _expire(ttl: float) -> int:
    """Seconds for memcached: rounded up, plus one tick of its 1-second clock, at most 30 days."""
    return min(math.ceil(check_ttl(ttl)) + 1, _MAX_TTL)


def _mkey(key: str) -> str:
    """``key`` if memcached accepts it as is (short, printable ASCII, no spaces), else a digest."""
    if len(key) <= _MAX_KEY and key.isascii() and key.isprintable() and " " not in key:
        return key
    return "tg~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _owner(raw: Any) -> str | None:
    """A claim or mark value: None when absent or a tombstone; undecodable bytes still name
    *somebody* (so they are never mistaken for "free")."""
    if raw is None or raw == TOMBSTONE:
        return None
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", errors="replace")
    return str(raw)


def _value(raw: Any) -> str | None:
    """A published value: strict UTF-8 text, else None."""
    if not isinstance(raw, (bytes, bytearray)):
        return None
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return None


def parse_memcached_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of ``memcached://host[:port]`` (port 11211 by default)."""
    parts = urlsplit(url)
    if parts.scheme != "memcached":
        raise ValueError("a memcached URL starts with memcached://")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("a memcached URL is memcached://host:port, nothing more")
    host = parts.hostname
    if not host:
        raise ValueError("a memcached URL names a host: memcached://host:port")
    return host, parts.port or 11211  # .port raises ValueError on a bad port


class MemcachedStore(ServerStore):
    """A store on one memcached server (see the module docstring for what it guarantees).

    :param connect_timeout: seconds to open a connection.
    :param timeout: seconds to wait for any answer; past it the store is unavailable.
    :param identity_ttl: seconds :meth:`identity` reuses the server identity it last read.
    :param max_pool_size: connections kept per process (default: unbounded, one per thread).
    """

    shared = True

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 11211,
        *,
        connect_timeout: float = 0.5,
        timeout: float = 0.5,
        identity_ttl: float = 0.05,
        max_pool_size: int | None = None,
    ) -> None:
        self.host = host
        self.port = int(port)
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.identity_ttl = identity_ttl
        self.max_pool_size = max_pool_size
        self._lock = threading.Lock()
        self._client: tuple[int, PooledClient] | None = None
        self._orphans: list[Any] = []
        self._server_state = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemcachedStore:
        """A store for ``memcached://host:port``; ``options`` as for the constructor."""
        host, port = parse_memcached_url(url)
        return cls(host, port, **options)

    def _pool(self) -> PooledClient:
        """This process's client pool; a forked child builds its own."""
        pid = os.getpid()
        current = self._client
        if current is not None and current[0] == pid:
            return current[1]
        with self._lock:
            current = self._client
            if current is None or current[0] != pid:
                if current is not None:
                    # Inherited from the parent: its locks and sockets are not ours to touch.
                    self._orphans.append(current[1])
                    self._server_state = None
                client = PooledClient(
                    (self.host, self.port),
                    connect_timeout=self.connect_timeout,
                    timeout=self.timeout,
                    no_delay=True,
                    default_noreply=False,
                    max_pool_size=self.max_pool_size,
                )
                current = (pid, client)
                self._client = current
            return current[1]

    def _call(self, fn: Callable[[PooledClient], _T]) -> _T:
        client = self._pool()
        try:
            return fn(client)
        except _UNREACHABLE as exc:
            raise StoreUnavailable(f"memcached unreachable: {type(exc).__name__}: {exc}") from exc
        except MemcacheError as exc:
            raise StoreError(f"memcached refused: {type(exc).__name__}: {exc}") from exc

    # -- Store ------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        expire, mkey, data = _expire(ttl), _mkey(key), owner.encode("utf-8")

        def run(c: PooledClient) -> bool:
            for _ in range(3):
                try:
                    if c.add(mkey, data, expire=expire, noreply=False):
                        return True
                    value, token = c.gets(mkey)
                    if value is None:
                        continue  # expired since the add: try again
                    if value != TOMBSTONE:
                        return False
                    if c.cas(mkey, data, token, expire=expire, noreply=False):
                        return True
                except _UNREACHABLE:
                    # The write may or may not have landed: ours if it reads back as ours.
                    return bool(c.get(mkey) == data)
            return False

        return self._call(run)

    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        expire, mkey, data = _expire(ttl), _mkey(key), owner.encode("utf-8")

        def run(c: PooledClient) -> bool:
            value, token = c.gets(mkey)
            if value != data:
                return False
            try:
                c.set(mkey + MARK_SUFFIX, data, expire=expire, noreply=False)
            except _UNREACHABLE:
                if c.get(mkey + MARK_SUFFIX) != data:
                    raise
            after, token_after = c.gets(mkey)
            return bool(after == data and token_after == token)

        return self._call(run)

    def read_claim(self, key: str) -> ClaimInfo:
        mkey = _mkey(key)
        found = self._call(lambda c: c.get_many([mkey, mkey + MARK_SUFFIX]))
        return ClaimInfo(
            owner=_owner(found.get(mkey)), sent_by=_owner(found.get(mkey + MARK_SUFFIX))
        )

    def release(self, key: str, owner: str) -> bool:
        mkey, data = _mkey(key), owner.encode("utf-8")

        def run(c: PooledClient) -> bool:
            value, token = c.gets(mkey)
            if value != data:
                return False
            return bool(c.cas(mkey, TOMBSTONE, token, expire=1, noreply=False))

        return self._call(run)

    def publish(self, key: str, value: str, ttl: float) -> None:
        expire = _expire(ttl)
        if not isinstance(value, str):
            raise TypeError(f"values are text, not {type(value).__name__}")
        data = value.encode("utf-8")
        self._call(lambda c: c.set(_mkey(key), data, expire=expire, noreply=False))

    def read(self, key: str) -> str | None:
        return _value(self._call(lambda c: c.get(_mkey(key))))

    def forget(self, key: str) -> None:
        self._call(lambda c: c.delete(_mkey(key), noreply=False))

    def _read_server(self) -> tuple[str | None, float | None]:
        """memcached's pid and start time (both change on a restart), and its uptime."""
        try:
            stats = self._call(lambda c: c.stats())
        except StoreUnavailable:
            raise
        except StoreError:
            return None, None  # "stats" refused (a proxy): restarts cannot be noticed
        try:
            uptime = int(stats[b"uptime"])
            return f"{stats[b'pid']}@{int(stats[b'time']) - uptime}", float(uptime)
        except (KeyError, TypeError, ValueError):
            return None, None

    def close(self) -> None:
        with self._lock:
            current, self._client = self._client, None
        if current is not None and current[0] == os.getpid():
            current[1].close()

    def __repr__(self) -> str:
        return f"MemcachedStore('memcached://{self.host}:{self.port}')"
