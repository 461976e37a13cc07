"""``file:///abs/dir``: a store shared by the processes of **one host**, in a local directory.

Guarantees (a local file system: flock over NFS is emulated with per-process POSIX locks and
would let two threads of one process both "hold" a claim):

* **Atomic steps.** Every change to a key runs under a short ``fcntl.flock`` on one of 256 lock
  files (chosen by the key's hash), so check-and-take is atomic across threads and processes.
  The kernel drops that lock if its process dies. A process stopped (SIGSTOP) inside this few
  microseconds' section blocks the keys of its stripe until it resumes or dies; meanwhile the
  others raise :class:`StoreUnavailable` after ``lock_timeout`` instead of hanging.
* **Claims** are a record ``{"owner", "expires"}`` (wall clock) written atomically (temp file,
  ``os.replace``) and ``flock``-ed by its holder for as long as it holds the claim. A claim is
  live while it has not expired *and* its holder still holds that lock. Hence:

  - holder **dies** (SIGKILL, OOM): the kernel drops the lock, the claim is free at once;
  - holder **stalls** (SIGSTOP, a stuck thread): the lock stays, so the claim holds until its
    expiry, then the record is replaced by the next claimer; the stalled holder, once resumed,
    gets False from ``mark_sent`` and ``release``, so it never sends.

  A forked child does not inherit its parent's claims (their descriptors are closed in the
  child without unlocking), and :meth:`close` gives up the claims this instance holds.
* **"Sent" marks** are a separate record (``<name>.sent``) with their own expiry, fsynced
  before they count: they survive the claim, the holder's death, and a crash of the host.
* **Values** are JSON records ``{"value", "expires"}`` written atomically and read without a
  lock; what does not parse as such a record (a pickle, bytes that are not UTF-8) reads as None.
  Nothing is ever unpickled. ``swap`` and ``touch`` read the record, decide and rewrite it
  under the key's lock, where a void or expired record counts as absent (and is removed).
* Expiries are wall-clock times (``time.time()``): a clock jump moves them. Expired and void
  records are removed when met, and by a sweep of the directory every ``sweep_interval``.

* **The directory** (and its ``.locks`` folder) must be this user's own: not a symlink, owned
  by the process's user, writable by nobody else (``chmod 700``). Anyone who can write there
  could forge claims and values, so a directory that fails the check (say, one pre-created in a
  shared ``/tmp``) is refused with :class:`ConfigurationError`. One it creates is 0700.
* Records larger than :attr:`~flask_tokenguard.stores.base.Store.max_value_bytes` (4 MiB) are
  not read whole: they read as void, like any other garbage.
* **Waiting** (:meth:`FileStore.wait_for`) wakes on the file's appearance, not on a poll: on
  Linux it watches the directory with inotify (libc's ``inotify_init1`` and
  ``inotify_add_watch`` through ``ctypes``; a descriptor per waiting thread, kept for the next
  wait, since closing one takes the kernel 10-20 ms) for the value's
  name being moved into place (``IN_MOVED_TO``, what ``os.replace`` of a written temp file
  gives) or written (``IN_CLOSE_WRITE``), reads the value only then, and again every
  ``reread_interval`` seconds in case an event is lost. The watch is set before the read that
  follows it, so a value that lands in between is read, not missed. Where inotify is missing
  (not Linux, the per-user instance limit reached, ``notify=False``) waiters poll.

Why not cachelib's ``FileSystemCache``: it pickles by default, counts expiries in whole seconds
as a 32-bit number, keeps a shared item counter that it updates without a lock on every write,
and logs and swallows I/O errors (a full disk would read as "no value"). Own files are simpler:
one file per key, named after the key, and every I/O error surfaces as ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import hashlib
import json
import math
import os
import select
import shlex
import stat
import struct
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ..errors import ConfigurationError, StoreUnavailable
from .base import ClaimInfo, Store, check_ttl

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-")
_MAX_NAME = 200
_CLAIM, _MARK = ".claim", ".sent"
_TMP = ".tmp."
_LOCKS = ".locks"
_IDENTITY = ".identity"

_T = TypeVar("_T")

# inotify(7): the events a waiter wakes on, and the ones that end a watch or lose events.
_IN_CLOSE_WRITE, _IN_MOVED_TO = 0x00000008, 0x00000080
_IN_Q_OVERFLOW, _IN_IGNORED = 0x00004000, 0x00008000
_IN_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name


def _libc_inotify() -> Any:
    """libc with ``inotify_init1`` and ``inotify_add_watch``, or None (not Linux, no libc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc_inotify()


def watch_directory(directory: Path) -> int | None:
    """A non-blocking inotify descriptor watching ``directory`` for files written or moved in;
    None where inotify is not there (not Linux, the per-user limit of instances reached)."""
    if _LIBC is None:
        return None
    fd = int(_LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
    if fd < 0:
        return None
    if _LIBC.inotify_add_watch(fd, os.fsencode(directory), _IN_CLOSE_WRITE | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


def watched_events(fd: int, timeout: float) -> list[tuple[int, str]]:
    """The ``(mask, name)`` events queued on ``fd`` within ``timeout`` seconds (0: those
    queued now), ``[]`` when none came."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if not poller.poll(max(0, math.ceil(timeout * 1000))):
        return []
    try:
        data = os.read(fd, 65536)
    except BlockingIOError:
        return []
    events: list[tuple[int, str]] = []
    offset = 0
    while offset + _IN_EVENT.size <= len(data):
        _wd, mask, _cookie, size = _IN_EVENT.unpack_from(data, offset)
        offset += _IN_EVENT.size
        events.append((mask, os.fsdecode(data[offset : offset + size].rstrip(b"\0"))))
        offset += size
    return events


def wait_for_name(fd: int, name: str, until: float) -> bool:
    """Wait on the watch ``fd`` until an event names the file ``name``, events were lost (the
    queue overflowed) or the monotonic time ``until`` passes: True (read again); False once
    the watch has ended (the directory went away)."""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return True
        for mask, seen in watched_events(fd, left):
            if mask & _IN_IGNORED:
                return False
            if seen == name or mask & _IN_Q_OVERFLOW:
                return True


def drain(fd: int) -> bool:
    """Drop the events queued on the watch ``fd``: True, or False when the watch has ended."""
    while True:
        events = watched_events(fd, 0)
        if not events:
            return True
        if any(mask & _IN_IGNORED for mask, _ in events):
            return False


#: Every FileStore of this process, and the lock files held right now (closed after a fork).
_INSTANCES: weakref.WeakSet[FileStore] = weakref.WeakSet()
_GUARD_FDS: set[int] = set()


def file_name(key: str) -> str:
    """The file name of ``key``: itself when made of ``[A-Za-z0-9:_-]``, else %-escaped.

    The escape is injective (``%`` is escaped too, and no name contains ``.``), so two keys
    never share a file. Names longer than 200 characters become ``~`` + SHA-256.
    """
    parts: list[str] = []
    for ch in key:
        if ch in _SAFE:
            parts.append(ch)
        else:
            parts.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    name = "".join(parts)
    if not name or len(name) > _MAX_NAME:
        return "~" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return name


def _parse(raw: bytes, field: str) -> tuple[str, float] | None:
    """``(record[field], record["expires"])`` of a record this store wrote, else None."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    text, expires = record.get(field), record.get("expires")
    if not isinstance(text, str) or isinstance(expires, bool):
        return None
    if not isinstance(expires, (int, float)):
        return None
    return text, float(expires)


def _read_fd(fd: int, limit: int) -> bytes:
    """The file's bytes, or b"" (void) when it holds more than ``limit``: never read whole."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = os.read(fd, min(65536, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    return b""


def unsafe_directory(path: Path) -> str | None:
    """Why ``path`` is not safe to keep claims in, and the fix; None when it is: a real
    directory (not a symlink), owned by this process's user, writable by nobody else."""
    info = os.lstat(path)
    quoted = shlex.quote(str(path))
    if stat.S_ISLNK(info.st_mode):
        return "is a symlink; fix: point TOKENGUARD_CACHE_URL at a real directory"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory; fix: point TOKENGUARD_CACHE_URL at a directory"
    if info.st_mode & stat.S_ISVTX and info.st_mode & stat.S_IWOTH:
        return (
            f"is shared, like /tmp (mode {stat.S_IMODE(info.st_mode):o}); fix: point "
            "TOKENGUARD_CACHE_URL at a directory of this user's own (a missing one is created 0700)"
        )
    if info.st_uid != os.geteuid():
        return (
            f"is owned by uid {info.st_uid}, not by this process's user (uid {os.geteuid()}); "
            f"fix: chown {os.geteuid()} {quoted} && chmod 700 {quoted}, or use another directory"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        return f"is writable by group or others (mode {mode:o}); fix: chmod 700 {quoted}"
    return None


def _locked_by_other(fd: int) -> bool:
    """True when some open file description other than ``fd``'s holds a flock on the file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _close_all(fds: list[int]) -> None:
    """Close every descriptor in ``fds`` (quietly) and empty the list."""
    while fds:
        _close_quietly(fds.pop())


class UnsafeDirectory(StoreUnavailable):
    """The directory is not this user's own (:func:`unsafe_directory`): it is not used."""


class FileStore(Store):
    """Claims, marks and values as files in ``directory`` (see the module docstring).

    :param directory: an absolute path; created with mode 0o700 if missing.
    :param lock_timeout: seconds to wait for a key's lock before :class:`StoreUnavailable`.
    :param sweep_interval: seconds between sweeps of expired files (per instance).
    :param notify: wait on inotify where it is there; False: poll.
    """

    shared = True
    #: Seconds between re-reads while :meth:`wait_for` waits on inotify, in case an event is lost.
    reread_interval = 0.25
    #: Idle inotify descriptors kept for the next waits (closing one costs the kernel a grace
    #: period, about 10-20 ms, which a waiter would otherwise pay after every wake).
    idle_watches = 8

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        lock_timeout: float = 1.0,
        sweep_interval: float = 60.0,
        notify: bool = True,
    ) -> None:
        path = Path(directory)
        if not path.is_absolute():
            raise ValueError(f"the store directory must be an absolute path, not {str(path)!r}")
        self.directory = path
        self.lock_timeout = lock_timeout
        self.sweep_interval = sweep_interval
        self.notify = notify
        self._watch_lock = threading.Lock()
        self._watches: list[int] = []  # idle inotify descriptors watching the directory
        weakref.finalize(self, _close_all, self._watches)
        self._held_lock = threading.Lock()
        # (file name, owner) -> (fd holding the claim record's flock, wall-clock expiry)
        self._held: dict[tuple[str, str], tuple[int, float]] = {}
        self._next_sweep = time.monotonic() + sweep_interval
        try:
            self._io(self._make_dirs)
        except UnsafeDirectory as exc:
            raise ConfigurationError(f"TOKENGUARD_CACHE_URL: {exc}") from None
        _INSTANCES.add(self)

    # -- paths and plumbing ----------------------------------------------------------------

    def value_path(self, key: str) -> Path:
        """Where the value of ``key`` lives (claims and marks sit beside it, with suffixes)."""
        return self.directory / file_name(key)

    def _make_dirs(self) -> None:
        """Create the directory and its lock folder (0700) if missing; check both are safe."""
        for path in (self.directory, self.directory / _LOCKS):
            with contextlib.suppress(FileExistsError):  # a file there: refused just below
                os.makedirs(path, 0o700, exist_ok=True)  # the mode applies to the leaf only
            problem = unsafe_directory(path)
            if problem is not None:
                raise UnsafeDirectory(
                    f"the file store directory {str(path)!r} {problem}. Anyone who can write "
                    "there can forge claims and values, so it is not used"
                )
        if not (self.directory / _IDENTITY).exists():
            # Create-if-absent with its content in place: link() never overwrites.
            fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=self.directory)
            try:
                os.write(fd, uuid.uuid4().hex.encode("ascii"))
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, self.directory / _IDENTITY)
            finally:
                os.close(fd)
                _unlink(Path(tmp))

    def _io(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; recreate a vanished directory once; any OSError -> StoreUnavailable.

        (Also an unsafe directory met after the start, as :class:`UnsafeDirectory`.)
        """
        try:
            try:
                return fn()
            except FileNotFoundError:
                if (self.directory / _LOCKS).is_dir():
                    raise
                self._make_dirs()
                return fn()
        except OSError as exc:
            raise StoreUnavailable(f"file store {str(self.directory)!r}: {exc}") from exc

    @contextlib.contextmanager
    def _guard(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """The flock of ``name``'s stripe; StoreUnavailable if busy for ``timeout`` seconds."""
        stripe = hashlib.sha256(name.encode()).hexdigest()[:2]
        fd = os.open(
            self.directory / _LOCKS / stripe,
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        _GUARD_FDS.add(fd)
        try:
            end = time.monotonic() + (self.lock_timeout if timeout is None else timeout)
            delay = 0.0005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= end:
                        raise StoreUnavailable(
                            f"file store {str(self.directory)!r}: a lock stayed busy "
                            "(a process stopped while holding it?)"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.01)
            yield
        finally:
            _GUARD_FDS.discard(fd)
            os.close(fd)  # also drops the flock

    def _open(self, path: Path) -> tuple[int, bytes] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            return fd, _read_fd(fd, self.max_value_bytes)
        except BaseException:
            os.close(fd)
            raise

    def _write(
        self, path: Path, record: dict[str, Any], *, hold: bool = False, durable: bool = False
    ) -> int | None:
        """Replace ``path`` by ``record`` atomically; with ``hold``, return an fd that flocks it."""
        data = json.dumps(record, ensure_ascii=True, allow_nan=False).encode("ascii")
        fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=self.directory)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if hold:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: never busy
            if durable:
                os.fsync(fd)
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            _unlink(Path(tmp))
            raise
        if durable:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        if hold:
            return fd
        os.close(fd)
        return None

    # -- records (call under the key's guard) ------------------------------------------------

    def _live_claim(self, path: Path, now: float) -> str | None:
        """The live claim's owner; an expired, abandoned or unreadable record is removed."""
        opened = self._open(path)
        if opened is None:
            return None
        fd, raw = opened
        try:
            record = _parse(raw, "owner")
            if record is not None and record[1] > now and _locked_by_other(fd):
                return record[0]
        finally:
            os.close(fd)
        _unlink(path)
        return None

    def _live(self, path: Path, field: str, now: float) -> str | None:
        """A mark's owner or a value while unexpired; an expired or unreadable one is removed."""
        opened = self._open(path)
        if opened is None:
            return None
        fd, raw = opened
        os.close(fd)
        record = _parse(raw, field)
        if record is not None and record[1] > now:
            return record[0]
        _unlink(path)
        return None

    # -- claims held by this instance ------------------------------------------------------

    def _hold(self, name: str, owner: str, fd: int, expires: float) -> None:
        with self._held_lock:
            old = self._held.pop((name, owner), None)
            self._held[(name, owner)] = (fd, expires)
        if old is not None:
            _close_quietly(old[0])

    def _drop(self, name: str, owner: str) -> None:
        with self._held_lock:
            entry = self._held.pop((name, owner), None)
        if entry is not None:
            _close_quietly(entry[0])

    def _drop_expired_holds(self, now: float) -> None:
        """Past its expiry a claim holds by time no more, so its lock need not stay open."""
        with self._held_lock:
            stale = [k for k, (_, expires) in self._held.items() if expires <= now]
            fds = [self._held.pop(k)[0] for k in stale]
        for fd in fds:
            _close_quietly(fd)

    def _after_fork_in_child(self) -> None:
        # The parent's locks are the parent's: close our copies without unlocking them. The
        # idle watches are the parent's too (one queue of events, read by whoever reads first).
        self._held_lock = threading.Lock()
        held, self._held = self._held, {}
        for fd, _ in held.values():
            _close_quietly(fd)
        self._watch_lock = threading.Lock()
        _close_all(self._watches)

    # -- inotify watches of the directory, reused ---------------------------------------------

    def _take_watch(self) -> int | None:
        """An inotify descriptor watching the directory, with no events queued; None where
        inotify is not there."""
        while True:
            with self._watch_lock:
                fd = self._watches.pop() if self._watches else None
            if fd is None:
                return watch_directory(self.directory)
            if self._io(functools.partial(drain, fd)):
                return fd
            _close_quietly(fd)  # the directory went away since: its watch ended

    def _give_back(self, fd: int, alive: bool) -> None:
        if alive:
            with self._watch_lock:
                if len(self._watches) < self.idle_watches:
                    self._watches.append(fd)
                    return
        _close_quietly(fd)

    # -- Store ------------------------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl: float) -> bool:
        ttl = check_ttl(ttl)
        name = file_name(key)
        path = self.directory / (name + _CLAIM)

        def run() -> bool:
            with self._guard(name):
                now = time.time()
                if self._live_claim(path, now) is not None:
                    return False
                fd = self._write(path, {"owner": owner, "expires": now + ttl}, hold=True)
                assert fd is not None
                self._hold(name, owner, fd, now + ttl)
                return True

        self._drop_expired_holds(time.time())
        won = self._io(run)
        self._maybe_sweep()
        return won

    def mark_sent(self, key: str, owner: str, ttl: float) -> bool:
        ttl = check_ttl(ttl)
        name = file_name(key)

        def run() -> bool:
            with self._guard(name):
                now = time.time()
                if self._live_claim(self.directory / (name + _CLAIM), now) != owner:
                    return False
                self._write(
                    self.directory / (name + _MARK),
                    {"owner": owner, "expires": now + ttl},
                    durable=True,
                )
                return True

        return self._io(run)

    def read_claim(self, key: str) -> ClaimInfo:
        name = file_name(key)

        def run() -> ClaimInfo:
            with self._guard(name):
                now = time.time()
                return ClaimInfo(
                    owner=self._live_claim(self.directory / (name + _CLAIM), now),
                    sent_by=self._live(self.directory / (name + _MARK), "owner", now),
                )

        return self._io(run)

    def release(self, key: str, owner: str) -> bool:
        name = file_name(key)
        path = self.directory / (name + _CLAIM)

        def run() -> bool:
            with self._guard(name):
                opened = self._open(path)
                if opened is None:
                    return False
                fd, raw = opened
                os.close(fd)
                record = _parse(raw, "owner")
                if record is None or record[0] != owner:
                    return False
                _unlink(path)
                return record[1] > time.time()

        try:
            return self._io(run)
        finally:
            self._drop(name, owner)

    def _publish(self, key: str, value: str, ttl: float) -> None:
        self._update(key, ttl, lambda _current: value, look=False)

    def _swap(self, key: str, expected: str | None, value: str, ttl: float) -> bool:
        return self._update(key, ttl, lambda current: value if current == expected else None)

    def _touch(self, key: str, ttl: float) -> bool:
        return self._update(key, ttl, lambda current: current)

    def _update(
        self, key: str, ttl: float, change: Callable[[str | None], str | None], *, look: bool = True
    ) -> bool:
        """Under the key's lock: ``change`` the live value (None when absent; not read unless
        ``look``) into a new one, written to live ``ttl`` seconds from now; True when written,
        False when ``change`` gave None (nothing written). An expired or void record met is
        removed."""
        name = file_name(key)
        path = self.directory / name

        def run() -> bool:
            with self._guard(name):
                now = time.time()
                value = change(self._live(path, "value", now) if look else None)
                if value is None:
                    return False
                self._write(path, {"value": value, "expires": now + ttl})
                return True

        written = self._io(run)
        self._maybe_sweep()
        return written

    def read(self, key: str) -> str | None:
        name = file_name(key)
        path = self.directory / name

        def run() -> tuple[str | None, bool]:
            opened = self._open(path)
            if opened is None:
                return None, False
            fd, raw = opened
            os.close(fd)
            record = _parse(raw, "value")
            if record is None:
                return None, False
            if record[1] <= time.time():
                return None, True
            return record[0], False

        value, expired = self._io(run)
        if expired:
            # Removed under the lock, after a second look: a fresh publish may have replaced it.
            with contextlib.suppress(StoreUnavailable, OSError), self._guard(name, timeout=0):
                self._live(path, "value", time.time())
        return value

    def wait_for(self, key: str, timeout: float) -> str | None:
        """Watch the directory (inotify), then read: wakes when the value's file lands.

        Polls where inotify is not there; see the module docstring.
        """
        end = time.monotonic() + max(0.0, timeout)
        value = self.read(key)  # the common case needs no watch
        if value is not None or timeout <= 0:
            return value
        fd = self._take_watch() if self.notify else None
        if fd is None:
            return super().wait_for(key, end - time.monotonic())
        name, alive = file_name(key), True

        def pause(left: float) -> bool:
            nonlocal alive
            until = time.monotonic() + min(left, self.reread_interval)
            # False: the watch ended (the directory went away): poll.
            alive = self._io(functools.partial(wait_for_name, fd, name, until))
            return alive

        try:
            # The watch is set: a value that lands from now on wakes us, and the first read
            # sees one that landed before.
            value = self._read_until(key, end, pause)
        except BaseException:
            _close_quietly(fd)
            raise
        self._give_back(fd, alive)
        return value

    def forget(self, key: str) -> None:
        name = file_name(key)

        def run() -> None:
            with self._guard(name):
                _unlink(self.directory / name)

        self._io(run)

    def ping(self) -> None:
        """A stat of the lock folder: StoreUnavailable when the directory cannot be used."""
        self._io(lambda: os.stat(self.directory / _LOCKS))

    def identity(self) -> str | None:
        """A random id written when the directory is created: a wiped store gets a new one."""

        def run() -> str:
            try:
                return (self.directory / _IDENTITY).read_text("ascii").strip()
            except FileNotFoundError:
                self._make_dirs()
                return (self.directory / _IDENTITY).read_text("ascii").strip()

        return self._io(run)

    def close(self) -> None:
        """Give up the claims this instance holds (their records free at once) and forget them."""
        with self._held_lock:
            held, self._held = self._held, {}
        for fd, _ in held.values():
            _close_quietly(fd)
        with self._watch_lock:
            _close_all(self._watches)

    def __repr__(self) -> str:
        return f"FileStore({str(self.directory)!r})"

    # -- sweeping --------------------------------------------------------------------------

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_interval
        with contextlib.suppress(OSError, StoreUnavailable):
            self.sweep()

    def sweep(self) -> int:
        """Remove expired and void records and stale temp files; return how many went."""
        removed = 0
        now = time.time()
        self._drop_expired_holds(now)
        with os.scandir(self.directory) as entries:
            names = [e.name for e in entries if e.is_file(follow_symlinks=False)]
        for entry in names:
            path = self.directory / entry
            if entry.startswith(_TMP):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < now - 60:
                        _unlink(path)
                        removed += 1
                continue
            if entry.startswith("."):
                continue
            name, dot, suffix = entry.partition(".")
            try:
                with self._guard(name, timeout=0):
                    if dot and "." + suffix == _CLAIM:
                        gone = self._live_claim(path, now) is None
                    elif dot and "." + suffix == _MARK:
                        gone = self._live(path, "owner", now) is None
                    elif not dot:
                        gone = self._live(path, "value", now) is None
                    else:
                        continue
            except StoreUnavailable:
                continue  # busy: next time
            removed += gone
        return removed


def _after_fork_in_child() -> None:
    for fd in list(_GUARD_FDS):
        _close_quietly(fd)
    _GUARD_FDS.clear()
    for store in list(_INSTANCES):
        store._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
