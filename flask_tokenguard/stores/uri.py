"""``TOKENGUARD_CACHE_URL`` -> a :class:`Store`.

Backends are imported only when their scheme is used, so ``redis`` and ``pymemcache`` stay
optional extras. Errors name the config key and never echo a password from the URL.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import ConfigurationError
from .base import Store

CONFIG_KEY = "TOKENGUARD_CACHE_URL"
SCHEMES = ("redis://", "rediss://", "memcached://", "file:///abs/dir", "simple://")
#: Directory of the default store, under the app's instance path.
DEFAULT_DIRECTORY = "tokenguard-store"


def store_from_uri(uri: str | None, *, instance_path: str, **options: Any) -> Store:
    """Build the store ``uri`` names; None means a :class:`FileStore` under the instance path.

    ``options`` go to the backend's constructor (e.g. ``timeout``).
    Raises :class:`ConfigurationError` for an unknown scheme, a relative ``file://`` path, a
    malformed URL or a backend whose optional dependency is not installed.
    """
    if uri is None:
        from .files import FileStore

        return FileStore(os.path.abspath(os.path.join(instance_path, DEFAULT_DIRECTORY)), **options)
    if not isinstance(uri, str) or not uri.strip():
        raise ConfigurationError(f"{CONFIG_KEY} must be a URL, one of: {', '.join(SCHEMES)}")
    uri = uri.strip()
    try:
        scheme = urlsplit(uri).scheme.lower()
        if scheme in ("redis", "rediss"):
            return _redis(uri, options)
        if scheme == "memcached":
            return _memcached(uri, options)
        if scheme == "file":
            return _file(uri, options)
        if scheme == "simple":
            return _simple(uri, options)
    except ValueError as exc:
        if isinstance(exc, ConfigurationError):
            raise
        raise ConfigurationError(f"{CONFIG_KEY} {redact(uri)!r} is not valid: {exc}") from None
    raise ConfigurationError(
        f"{CONFIG_KEY} {redact(uri)!r} has an unknown scheme; use one of: {', '.join(SCHEMES)}"
    )


@contextlib.contextmanager
def _needs(package: str, extra: str) -> Iterator[None]:
    """Turn the ImportError of a missing optional ``package`` into the command that installs it."""
    try:
        yield
    except ImportError as exc:
        name = exc.name or ""
        if name == package or name.startswith(package + "."):
            raise ConfigurationError(
                f"{CONFIG_KEY} needs the {package!r} package: "
                f'pip install "flask-tokenguard[{extra}]"'
            ) from None
        raise


def _redis(uri: str, options: dict[str, Any]) -> Store:
    with _needs("redis", "redis"):
        from .redis import RedisStore
    return RedisStore.from_url(uri, **options)


def _memcached(uri: str, options: dict[str, Any]) -> Store:
    with _needs("pymemcache", "memcached"):
        from .memcached import MemcachedStore
    return MemcachedStore.from_url(uri, **options)


def _file(uri: str, options: dict[str, Any]) -> Store:
    from .files import FileStore

    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ConfigurationError(
            f"{CONFIG_KEY} {uri!r}: a file URL needs an absolute path, "
            f"file:///abs/dir (three slashes); {parts.netloc!r} reads as a host name"
        )
    path = unquote(parts.path)
    if parts.query or parts.fragment or not path.startswith("/"):
        raise ConfigurationError(
            f"{CONFIG_KEY} {uri!r}: a file URL needs an absolute path, file:///abs/dir"
        )
    return FileStore(path, **options)


def _simple(uri: str, options: dict[str, Any]) -> Store:
    from .memory import MemoryStore

    if uri.lower().rstrip("/") != "simple:":
        raise ConfigurationError(f"{CONFIG_KEY}: write simple:// with nothing after it")
    if options:
        raise ConfigurationError(f"{CONFIG_KEY} simple:// takes no options: {sorted(options)}")
    return MemoryStore()


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(uri)
        if parts.password is None:
            return uri
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"
