"""What the store tests share: expiry slack, a poller, raw writes into a backend.

Timings: memory and file expire exactly; Redis expires claims to the millisecond but values to
the whole second (cachelib); memcached rounds every ttl up and adds one second of its clock.
``SLACK`` is how much later than its ttl an entry may still be there.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import pytest

from flask_tokenguard.stores.base import Store
from tests.fixtures.services import BACKENDS, StoreSpec

SLACK = {"memory": 0.3, "file": 0.3, "redis": 1.3, "memcached": 2.3}
FORK = multiprocessing.get_context("fork")

#: Cross-process tests run on the backends that share state between processes
#: (``simple://`` is one process by design: there is nothing to share).
shared_backends = pytest.mark.parametrize(
    "store_backend", [b for b in BACKENDS if b != "memory"], indirect=True
)


def eventually(check: Callable[[], Any], timeout: float, interval: float = 0.02) -> Any:
    """Poll ``check`` until it returns something truthy; that value, or the last one."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= end:
            return value
        time.sleep(interval)


def count_reads(store: Store) -> list[int]:
    """How many times ``store.read`` runs from now on (``wait_for`` reads through it): ``[n]``."""
    count = [0]
    read = store.read

    def counted(key: str) -> str | None:
        count[0] += 1
        return read(key)

    store.read = counted  # type: ignore[method-assign]
    return count


def put_raw(spec: StoreSpec, store: Store, key: str, data: bytes, *, claim: bool) -> bool:
    """Write ``data`` straight into the backend, as an attacker with access to it could.

    False when there is no such access (the claims of ``simple://`` live in this process).
    """
    if spec.backend == "redis":
        import redis

        client = redis.Redis.from_url(spec.location)
        try:
            client.set(key, data, ex=60)
        finally:
            client.close()
    elif spec.backend == "memcached":
        from pymemcache.client.base import Client

        from flask_tokenguard.stores.memcached import parse_memcached_url

        client = Client(parse_memcached_url(spec.location), connect_timeout=1, timeout=1)
        try:
            client.set(key, data, expire=60, noreply=False)
        finally:
            client.close()
    elif spec.backend == "file":
        from flask_tokenguard.stores.files import FileStore

        assert isinstance(store, FileStore)
        path = store.value_path(key)
        (path.with_name(path.name + ".claim") if claim else path).write_bytes(data)
    elif claim:
        return False
    else:
        store._values[key] = (data, time.monotonic() + 60)  # type: ignore[attr-defined]
    return True
