"""``TOKENGUARD_CACHE_URL`` parsing: every scheme, every refusal, no password in a message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from flask_tokenguard.errors import ConfigurationError
from flask_tokenguard.stores.files import FileStore
from flask_tokenguard.stores.memcached import MemcachedStore
from flask_tokenguard.stores.memory import MemoryStore
from flask_tokenguard.stores.redis import RedisStore
from flask_tokenguard.stores.uri import store_from_uri


def test_none_is_a_file_store_in_the_instance_folder(tmp_path: Path) -> None:
    store = store_from_uri(None, instance_path=str(tmp_path / "instance"))
    assert isinstance(store, FileStore)
    assert store.directory == tmp_path / "instance" / "tokenguard-store"
    assert store.directory.is_dir()
    assert store.directory.stat().st_mode & 0o777 == 0o700
    store.close()


def test_simple(tmp_path: Path) -> None:
    store = store_from_uri("simple://", instance_path=str(tmp_path))
    assert isinstance(store, MemoryStore)
    assert store.shared is False
    for bad in ("simple://somewhere", "simple://x/y"):
        with pytest.raises(ConfigurationError, match="TOKENGUARD_CACHE_URL"):
            store_from_uri(bad, instance_path=str(tmp_path))


def test_file(tmp_path: Path) -> None:
    target = tmp_path / "a dir"
    store = store_from_uri(f"file://{target.as_posix().replace(' ', '%20')}", instance_path="/x")
    assert isinstance(store, FileStore)
    assert store.directory == target
    store.close()
    store = store_from_uri(f"file://localhost{target}", instance_path="/x", lock_timeout=0.1)
    assert isinstance(store, FileStore) and store.lock_timeout == 0.1
    store.close()


@pytest.mark.parametrize("url", ["file://relative/dir", "file:relative", "file://", "file:"])
def test_file_needs_an_absolute_path(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"TOKENGUARD_CACHE_URL.*absolute"):
        store_from_uri(url, instance_path=str(tmp_path))


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "redis://:pw@cache.internal:6380/2", "rediss://h:6379"]
)
def test_redis(url: str, tmp_path: Path) -> None:
    store = store_from_uri(url, instance_path=str(tmp_path), timeout=0.1)
    assert isinstance(store, RedisStore)
    assert store.url == url
    assert store.timeout == 0.1
    assert "pw" not in repr(store)
    store.close()  # nothing was connected: the client is made on first use


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/abc",
        "redis://127.0.0.1:6379/-1",
        "redis://127.0.0.1:6379/99999",
        "redis://127.0.0.1:6379/16",
        "redis://127.0.0.1:6379/1.5",
        "redis://:hunter2@127.0.0.1:6379/abc",
        "rediss://user:hunter2@127.0.0.1:6379/-1",
        "redis://user:hunter2@127.0.0.1:6379/99999",
        "redis://127.0.0.1:6379/0?db=99999",
    ],
)
def test_bad_redis_database_numbers(url: str, tmp_path: Path) -> None:
    """Refused at once, not at the first SELECT; the message never shows the password."""
    with pytest.raises(ConfigurationError, match="TOKENGUARD_CACHE_URL") as info:
        store_from_uri(url, instance_path=str(tmp_path))
    message = str(info.value)
    assert "database number" in message
    assert "hunter2" not in message
    assert info.value.__cause__ is None, "the chained error could show the URL"


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379", "redis://h/", "redis://h/15"])
def test_good_redis_database_numbers(url: str, tmp_path: Path) -> None:
    store = store_from_uri(url, instance_path=str(tmp_path))
    assert isinstance(store, RedisStore)
    store.close()


def test_memcached(tmp_path: Path) -> None:
    store = store_from_uri("memcached://cache.internal:11311", instance_path=str(tmp_path))
    assert isinstance(store, MemcachedStore)
    assert (store.host, store.port) == ("cache.internal", 11311)
    store.close()
    store = store_from_uri("memcached://127.0.0.1", instance_path=str(tmp_path), timeout=0.2)
    assert isinstance(store, MemcachedStore)
    assert (store.port, store.timeout) == (11211, 0.2)
    store.close()


@pytest.mark.parametrize(
    "url",
    ["memcached://", "memcached://h:11211/path", "memcached://h:notaport", "memcached://h?x=1"],
)
def test_bad_memcached_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_CACHE_URL"):
        store_from_uri(url, instance_path=str(tmp_path))


def test_a_bad_url_never_shows_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_CACHE_URL") as info:
        store_from_uri("redis://user:hunter2@h:notaport/0", instance_path=str(tmp_path))
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None, "the chained error could show the URL"


@pytest.mark.parametrize(
    "url", ["mongodb://h", "memory://", "localhost:6379", "http://h", "C:\\store"]
)
def test_unknown_schemes_list_the_valid_ones(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        store_from_uri(url, instance_path=str(tmp_path))
    message = str(info.value)
    assert "TOKENGUARD_CACHE_URL" in message
    for scheme in ("redis://", "rediss://", "memcached://", "file:///", "simple://"):
        assert scheme in message


@pytest.mark.parametrize("url", ["", "   "])
def test_empty(url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="TOKENGUARD_CACHE_URL"):
        store_from_uri(url, instance_path=str(tmp_path))


@pytest.mark.parametrize(
    ("url", "package", "extra"),
    [
        ("redis://127.0.0.1:6379/0", "redis", "redis"),
        ("memcached://127.0.0.1:11211", "pymemcache", "memcached"),
    ],
)
def test_a_missing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, package: str, extra: str
) -> None:
    for name in list(sys.modules):
        if name == package or name.startswith(package + "."):
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)
    backend = "redis" if extra == "redis" else "memcached"
    monkeypatch.delitem(sys.modules, f"flask_tokenguard.stores.{backend}")
    with pytest.raises(ConfigurationError) as info:
        store_from_uri(url, instance_path=str(tmp_path))
    assert f'pip install "flask-tokenguard[{extra}]"' in str(info.value)
    assert "TOKENGUARD_CACHE_URL" in str(info.value)
