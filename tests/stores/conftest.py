"""Fixtures of the store tests.

The factory over every backend (``store_backend``, ``store_spec``, ``store``, ``make_store``)
and the services (``redis_url``, ``memcached_url``, ``private_redis``) come from
``tests/fixtures/services.py``; this adds what only these tests need.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from flask_tokenguard.stores.base import Store
from tests.fixtures.servers import free_port


@pytest.fixture(params=["redis", "memcached", "file"])
def unreachable_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store that cannot be reached: a server port nothing listens on, or a file store
    whose directory has been replaced by a plain file."""
    store: Store
    if request.param == "redis":
        from flask_tokenguard.stores.redis import RedisStore

        store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    elif request.param == "memcached":
        from flask_tokenguard.stores.memcached import MemcachedStore

        store = MemcachedStore.from_url(f"memcached://127.0.0.1:{free_port()}")
    else:
        from flask_tokenguard.stores.files import FileStore

        store = FileStore(tmp_path / "store")
        shutil.rmtree(tmp_path / "store")
        (tmp_path / "store").write_text("not a directory")
    try:
        yield store
    finally:
        store.close()
