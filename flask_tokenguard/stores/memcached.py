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
* **swap** (compare-and-set of a value) is ``add`` when the key must be absent, else ``gets``,
  compare, ``cas``: a ``cas`` that fails means somebody wrote in between, so the swap lost.
  **touch** is memcached's ``touch``, its ttl rounded as above.
* A restarted memcached forgets everything: :meth:`identity` (its pid and start time) changes.
* **wait_for** polls, since memcached cannot notify: a ``get`` every 1 ms, doubling to 10 ms
  (:attr:`~flask_tokenguard.stores.base.Store.poll_first`, ``poll_max``), so a waiter wakes at
  most about 10 ms after the value lands, for about 100 ``get`` a second while it waits.

Reads are capped at :attr:`~flask_tokenguard.stores.base.Store.max_value_bytes`: memcached
has no command that reads a length without the value, so a value is compared after ``get``
(the server's own item limit, 1 MiB unless ``-I`` raises it, bounds what crosses the wire); a
larger one reads as None (an owner: as somebody, never "free").

Why not cachelib's ``MemcachedCache``: it turns every ttl into an absolute Unix time computed
on *this* host (``int(time()) + timeout``), which ties expiries to clock agreement between
hosts, and it adds nothing the client lacks. pymemcache is used directly with no serde at all:
values go out as UTF-8 bytes and come back as bytes that are decoded, never unpickled.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any
from urllib.parse import urlsplit

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import MemcacheError, MemcacheUnexpectedCloseError

from .base import OVERSIZED, ClaimInfo, ServerStore, check_ttl, owner_text, value_text

MARK_SUFFIX = ":sent"
#: Written over a released claim; no owner is ever this value.
TOMBSTONE = b"\x00released"
_MAX_TTL = 30 * 24 * 3600
_MAX_KEY = 200  # memcached allows 250 bytes; leave room for the mark suffix
#: Seconds memcached's reported uptime runs ahead of its real one (1.6 says 2 at start).
_STARTED_EARLY = 2


def _expire(ttl: float) -> int:
    """Seconds for memcached: rounded up, plus one tick of its 1-second clock, at most 30 days."""
    return min(math.ceil(check_ttl(ttl)) + 1, _MAX_TTL)


def _mkey(key: str) -> str:
    """``key`` if memcached accepts it as is (short, printable ASCII, no spaces), else a digest."""
    if len(key) <= _MAX_KEY and key.isascii() and key.isprintable() and " " not in key:
        return key
    return "tg~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


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


class MemcachedStore(ServerStore[PooledClient]):
    """A store on one memcached server (see the module docstring for what it guarantees).

    :param max_pool_size: connections kept per process (default: unbounded, one per thread).
    :param timeouts: ``connect_timeout``, ``timeout``, ``identity_ttl``, as for
        :class:`~flask_tokenguard.stores.base.ServerStore`.
    """

    _unreachable = (OSError, MemcacheUnexpectedCloseError)
    _client_error = MemcacheError

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 11211,
        *,
        max_pool_size: int | None = None,
        **timeouts: float,
    ) -> None:
        super().__init__("memcached", **timeouts)
        self.host = host
        self.port = int(port)
        self.max_pool_size = max_pool_size

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemcachedStore:
        """A store for ``memcached://host:port``; ``options`` as for the constructor."""
        host, port = parse_memcached_url(url)
        return cls(host, port, **options)

    def _connect(self) -> PooledClient:
        return PooledClient(
            (self.host, self.port),
            connect_timeout=self.connect_timeout,
            timeout=self.timeout,
            no_delay=True,
            default_noreply=False,
            max_pool_size=self.max_pool_size,
        )

    def _disconnect(self, client: PooledClient) -> None:
        client.close()

    def _ping(self, client: PooledClient) -> None:
        client.version()

    def _capped(self, raw: Any) -> Any:
        """``raw``, or :data:`OVERSIZED` when it is longer than the cap; a tombstone is None."""
        if raw == TOMBSTONE:
            return None
        if isinstance(raw, (bytes, bytearray)) and len(raw) > self.max_value_bytes:
            return OVERSIZED
        return raw

    # -- Store ------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        expire, mkey, data = _expire(ttl), _mkey(key), owner.encode("utf-8")

        def take(c: PooledClient) -> bool:
            for _ in range(3):
                if c.add(mkey, data, expire=expire, noreply=False):
                    return True
                value, token = c.gets(mkey)
                if value is None:
                    continue  # expired since the add: try again
                if value != TOMBSTONE:
                    return False
                if c.cas(mkey, data, token, expire=expire, noreply=False):
                    return True
            return False

        # A write whose answer was lost may or may not have landed: ours if it reads back so.
        return self._settle(take, lambda c: bool(c.get(mkey) == data))

    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        expire, mkey, data = _expire(ttl), _mkey(key), owner.encode("utf-8")
        value, token = self._call(lambda c: c.gets(mkey))
        if value != data:
            return False
        self._settle(
            lambda c: bool(c.set(mkey + MARK_SUFFIX, data, expire=expire, noreply=False)),
            lambda c: bool(c.get(mkey + MARK_SUFFIX) == data),
            raise_unless_landed=True,
        )
        after, token_after = self._call(lambda c: c.gets(mkey))
        return bool(after == data and token_after == token)

    def read_claim(self, key: str) -> ClaimInfo:
        mkey = _mkey(key)
        found = self._call(lambda c: c.get_many([mkey, mkey + MARK_SUFFIX]))
        return ClaimInfo(
            owner=owner_text(self._capped(found.get(mkey))),
            sent_by=owner_text(self._capped(found.get(mkey + MARK_SUFFIX))),
        )

    def release(self, key: str, owner: str) -> bool:
        mkey, data = _mkey(key), owner.encode("utf-8")

        def run(c: PooledClient) -> bool:
            value, token = c.gets(mkey)
            if value != data:
                return False
            return bool(c.cas(mkey, TOMBSTONE, token, expire=1, noreply=False))

        return self._call(run)

    def _publish(self, key: str, value: str, ttl: float) -> None:
        expire, data = _expire(ttl), value.encode("utf-8")
        self._call(lambda c: c.set(_mkey(key), data, expire=expire, noreply=False))

    def _swap(self, key: str, expected: str | None, value: str, ttl: float) -> bool:
        expire, mkey, data = _expire(ttl), _mkey(key), value.encode("utf-8")
        token = None
        if expected is not None:
            current, token = self._call(lambda c: c.gets(mkey))
            if self._capped(current) != expected.encode("utf-8"):
                return False

        def write(c: PooledClient) -> bool:
            if token is None:  # the key must be absent
                return bool(c.add(mkey, data, expire=expire, noreply=False))
            # A failed cas: somebody wrote (or it expired) since the gets: the swap lost.
            return bool(c.cas(mkey, data, token, expire=expire, noreply=False))

        # A write whose answer was lost may or may not have landed: ours if it reads back so.
        return self._settle(write, lambda c: bool(c.get(mkey) == data), raise_unless_landed=True)

    def _touch(self, key: str, ttl: float) -> bool:
        expire, mkey = _expire(ttl), _mkey(key)
        return bool(self._call(lambda c: c.touch(mkey, expire=expire, noreply=False)))

    def read(self, key: str) -> str | None:
        return value_text(self._capped(self._call(lambda c: c.get(_mkey(key)))))

    def forget(self, key: str) -> None:
        self._call(lambda c: c.delete(_mkey(key), noreply=False))

    def _read_server(self) -> tuple[str | None, float | None]:
        """memcached's pid and start time (both change on a restart), and its uptime."""
        stats = self._server_info(lambda c: c.stats())
        if stats is None:
            return None, None
        try:
            uptime = int(stats[b"uptime"])
            # memcached dates its start _STARTED_EARLY seconds back: a restart's hold counts
            # from the real start (an uptime read too high would end the hold too soon).
            started = float(max(0, uptime - _STARTED_EARLY))
            return f"{stats[b'pid']}@{int(stats[b'time']) - uptime}", started
        except (KeyError, TypeError, ValueError):
            return None, None

    def __repr__(self) -> str:
        return f"MemcachedStore('memcached://{self.host}:{self.port}')"
