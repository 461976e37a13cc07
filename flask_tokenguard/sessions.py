"""Server-side sessions with Flask-Session, without any path that unpickles what it reads.

Flask-Session 0.8 has two: its msgspec serializer (Redis sessions) falls back to
``pickle.loads`` when a value does not decode, and its ``cachelib`` session type hands the
session to a cachelib cache, whose ``FileSystemCache`` pickles by default. Whoever can write
the session store would run code in the app. :func:`init_sessions` sets Flask-Session up with
serializers that only speak msgpack (Redis) or JSON (files)::

    from flask_tokenguard.sessions import init_sessions

    init_sessions(app, "redis://127.0.0.1:6379/0")  # sessions in that Redis
    init_sessions(app)  # files under <instance folder>/sessions

A stored value that is not a msgpack map (Redis) or a JSON object (files) counts as no session:
the request gets a new, empty one. Keep session values to JSON types (str, int, float, bool,
None, lists, dicts with str keys), which both stores keep as they are; a value a store cannot
encode fails the write with ``TypeError`` instead of silently losing the session.

Needs Flask-Session (``pip install "flask-tokenguard[sessions]"``), and ``redis`` for a Redis URL.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Mapping
from typing import IO, Any

from cachelib.file import FileSystemCache
from cachelib.serializers import JSONSerializer
from flask import Flask

from .errors import ConfigurationError

try:
    import msgspec
    from flask_session import Session
    from flask_session.base import Serializer
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"flask_tokenguard.sessions needs Flask-Session and msgspec ({exc.name} is missing):"
        ' pip install "flask-tokenguard[sessions]"'
    ) from exc

__all__ = ["REDIS_SCHEMES", "init_sessions"]

log = logging.getLogger("flask_tokenguard.sessions")

#: The URL schemes :func:`init_sessions` keeps sessions in Redis for.
REDIS_SCHEMES = ("redis://", "rediss://")


def init_sessions(
    app: Flask,
    url: str | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
    key_prefix: str | None = None,
) -> None:
    """Set up Flask-Session on ``app``, never reading a session with pickle.

    :param url: a ``redis://`` or ``rediss://`` URL: sessions live in that Redis, encoded as
        msgpack, with no JSON or pickle fallback. ``None``: sessions live in files.
    :param directory: where the session files go (created with mode 0700 if missing); by
        default ``sessions/`` under the app's instance folder. One file per session, mode
        0600, JSON after cachelib's 4-byte expiry; no file-count entry (``threshold=0``),
        since cachelib would read that through the same serializer. An expired session reads
        as none, but without a threshold cachelib deletes no file: prune the folder
        periodically (``find DIR -type f -mtime +N -delete``, N days past the session
        lifetime; a file is rewritten whenever its session is saved).
    :param key_prefix: Flask-Session's key prefix (``SESSION_KEY_PREFIX``); by default the
        app's configured one, else Flask-Session's ``session:``. Give every app sharing a
        Redis its own.
    :raises ConfigurationError: for another URL scheme, or both a URL and a directory.

    Call it before any request, in place of ``Session(app)``; it sets ``SESSION_TYPE`` and
    the store (``SESSION_REDIS`` or ``SESSION_CACHELIB``), and leaves Flask-Session's other
    settings (``SESSION_PERMANENT``, cookie options, ...) to the app's config.
    """
    if key_prefix is not None:
        app.config["SESSION_KEY_PREFIX"] = key_prefix
    if url is not None:
        if not url.startswith(REDIS_SCHEMES):
            scheme = url.partition(":")[0] or url
            raise ConfigurationError(
                f"init_sessions keeps sessions in Redis (redis:// or rediss://), not {scheme!r}:"
                " pass url=None for files"
            )
        if directory is not None:
            raise ConfigurationError("init_sessions takes a Redis url or a directory, not both")
        _redis_sessions(app, url)
    else:
        _file_sessions(app, directory or os.path.join(app.instance_path, "sessions"))


def _redis_sessions(app: Flask, url: str) -> None:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            'sessions in Redis need the redis package: pip install "flask-tokenguard[redis]"'
        ) from exc
    app.config["SESSION_TYPE"] = "redis"
    app.config["SESSION_REDIS"] = redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5
    )
    Session(app)
    # Flask-Session builds its serializer in the interface's constructor: replace it.
    app.session_interface.serializer = MsgpackOnly()  # type: ignore[attr-defined]


def _file_sessions(app: Flask, directory: str | os.PathLike[str]) -> None:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    cache = JSONFileSystemCache(os.fspath(directory), threshold=0, mode=0o600)
    app.config["SESSION_TYPE"] = "cachelib"
    app.config["SESSION_CACHELIB"] = cache
    Session(app)


class MsgpackOnly(Serializer):  # type: ignore[misc]  # Flask-Session ships no type hints
    """Flask-Session's session serializer without its JSON and pickle fallbacks."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(dict[str, Any])

    def encode(self, session: Mapping[str, Any]) -> bytes:
        return self._encoder.encode(dict(session))

    def decode(self, serialized_data: bytes) -> dict[str, Any] | None:
        """The session, or None for anything but a msgpack map (then a new session starts)."""
        try:
            data: dict[str, Any] = self._decoder.decode(serialized_data)
        except msgspec.DecodeError:
            log.warning("ignoring a stored session that is not a msgpack map")
            return None
        return data


class JSONFileSystemCache(FileSystemCache):
    """cachelib's file cache, in JSON: never pickles, and refuses what JSON cannot encode.

    cachelib's JSON serializer logs a value it cannot encode and writes an empty entry, so the
    session would silently read back as new; here the write fails (``TypeError``) before any
    file is touched, as a Redis session that msgpack cannot encode does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serializer = JSONObjectSerializer()  # type: ignore[assignment]  # not pickle

    def set(
        self,
        key: str,
        value: Any,
        timeout: int | datetime.timedelta | None = None,
        mgmt_element: bool = False,
    ) -> bool:
        json.dumps(value)  # TypeError or ValueError here, not an empty entry
        return bool(super().set(key, value, timeout, mgmt_element))


class JSONObjectSerializer(JSONSerializer):
    """cachelib's JSON file serializer, loading only JSON objects (a session is a dict)."""

    def load(self, f: IO[bytes], *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        try:
            data = json.loads(f.read())
        except ValueError:  # not UTF-8, not JSON
            data = None
        if not isinstance(data, dict):
            log.warning("ignoring a stored session that is not a JSON object")
            return None
        return data
