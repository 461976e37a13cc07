"""The file store: layout, lock stripes, sweeping, forks, and the directory it will trust."""

from __future__ import annotations

import os
import pwd
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from flask_tokenguard.errors import ConfigurationError, StoreUnavailable
from flask_tokenguard.stores import files
from flask_tokenguard.stores.files import FileStore
from tests.fixtures.services import StoreSpec
from tests.stores.helpers import FORK, count_reads, eventually


def test_file_store_layout(tmp_path: Path) -> None:
    from flask_tokenguard.stores.files import file_name

    store = FileStore(tmp_path / "store")
    try:
        assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700
        key = "tokenguard:result:" + "ab" * 32
        assert file_name(key) == key
        store.publish(key, "v", 30)
        assert store.value_path(key) == tmp_path / "store" / key
        assert store.value_path(key).stat().st_mode & 0o777 == 0o600
        names = {file_name(k) for k in ("a/b", "a%2Fb", "a.claim", "../x", "", "é", "a b")}
        assert len(names) == 7, "escaping is injective"
        assert all("/" not in n and "." not in n and n for n in names)
        assert len(file_name("k" * 500)) < 100
        with pytest.raises(ValueError):
            FileStore("relative/dir")
    finally:
        store.close()


def test_file_store_busy_lock_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    """A process stopped inside the short locked section blocks its keys' stripe: the others
    get StoreUnavailable after ``lock_timeout``; lock-free reads still work."""
    import fcntl
    import hashlib

    from flask_tokenguard.stores.files import file_name

    store = FileStore(tmp_path / "store", lock_timeout=0.2)
    key = "tokenguard:claim:" + "cd" * 32
    store.publish(key, "still readable", 30)
    stripe = hashlib.sha256(file_name(key).encode()).hexdigest()[:2]
    fd = os.open(tmp_path / "store" / ".locks" / stripe, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as if a stopped process held it
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.claim(key, "alice", 5)
        assert 0.2 <= time.monotonic() - start < 3.0, "waited lock_timeout, then gave up"
        assert store.read(key) == "still readable"
    finally:
        os.close(fd)
    assert store.claim(key, "alice", 5)
    store.close()


def test_file_store_sweeps_expired_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    try:
        store.publish("tgtest:v", "v", 1)
        store.publish("tgtest:keep", "v", 30)
        assert store.claim("tgtest:c", "alice", 1)
        assert store.mark_sent("tgtest:c", "alice", 1)
        assert store.claim("tgtest:held", "alice", 30)
        time.sleep(1.1)
        assert store.sweep() == 3
        left = sorted(p.name for p in (tmp_path / "store").iterdir() if p.name[0] != ".")
        assert left == ["tgtest:held.claim", "tgtest:keep"]
    finally:
        store.close()


def test_file_store_recreates_a_vanished_directory(tmp_path: Path) -> None:
    import shutil

    store = FileStore(tmp_path / "store")
    try:
        before = store.identity()
        shutil.rmtree(tmp_path / "store")
        store.publish("tgtest:v", "v", 30)
        assert store.read("tgtest:v") == "v"
        assert store.identity() != before, "a new directory is a store that lost its state"
    finally:
        store.close()


def _claim_fork_and_hang(spec: StoreSpec, key: str, grandchild: Any) -> None:
    store = spec.open()
    if not store.claim(key, "parent", 30):
        os._exit(3)
    pid = os.fork()
    if pid == 0:  # the grandchild inherits the descriptors, but must not keep the claim alive
        time.sleep(60)
        os._exit(0)
    grandchild.put(pid)
    time.sleep(60)


@pytest.mark.slow
def test_file_claims_are_not_inherited_by_a_fork(tmp_path: Path) -> None:
    spec = StoreSpec("file", str(tmp_path / "store"), "tgtest:")
    key = spec.key("claim", "fork")
    queue = FORK.Queue()
    child = FORK.Process(target=_claim_fork_and_hang, args=(spec, key, queue))
    child.start()
    grandchild = queue.get(timeout=10)
    store = FileStore(spec.location)
    try:
        assert store.read_claim(key).owner == "parent"
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        assert eventually(lambda: store.claim(key, "heir", 5), 3.0), "the fork kept the claim"
    finally:
        os.kill(grandchild, signal.SIGKILL)  # first: it holds the child's join sentinel too
        with pytest.raises(ChildProcessError):
            os.waitpid(grandchild, 0)  # not our child: reaped by init
        queue.close()
        queue.join_thread()
        store.close()
        child.join()


# -- the directory it trusts -------------------------------------------------------------------


def _refused(directory: Path) -> str:
    with pytest.raises(ConfigurationError) as info:
        FileStore(directory)
    message = str(info.value)
    assert "TOKENGUARD_CACHE_URL" in message
    return message


@pytest.mark.parametrize("where", ["directory", "locks"])
def test_a_symlinked_directory_is_refused(tmp_path: Path, where: str) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    if where == "directory":
        (tmp_path / "store").symlink_to(real)
        directory = tmp_path / "store"
    else:
        directory = tmp_path / "store"
        directory.mkdir(mode=0o700)
        (directory / ".locks").symlink_to(real)
    assert "symlink" in _refused(directory)
    assert list(real.iterdir()) == [], "nothing written through the link"


@pytest.mark.parametrize("mode", [0o720, 0o770, 0o702, 0o707, 0o777])
@pytest.mark.parametrize("where", ["directory", "locks"])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int, where: str) -> None:
    directory = tmp_path / "store"
    target = directory if where == "directory" else directory / ".locks"
    target.mkdir(mode=0o700, parents=True)
    os.chmod(target, mode)  # mkdir's mode passes through the umask
    message = _refused(directory)
    assert "writable by group or others" in message and "chmod 700" in message
    assert not (directory / ".identity").exists(), "nothing written into it"


def test_a_shared_directory_like_tmp_is_refused(tmp_path: Path) -> None:
    """The advice is a directory of its own, never to chmod a shared one."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    os.chmod(directory, 0o1777)
    message = _refused(directory)
    assert "shared" in message and "chmod" not in message


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a directory away")
def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    directory.mkdir(mode=0o700)
    os.chown(directory, pwd.getpwnam("nobody").pw_uid, -1)
    assert "owned by uid" in _refused(directory)


def test_a_directory_it_creates_is_private(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        store = FileStore(tmp_path / "new" / "store")
    finally:
        os.umask(old)
    try:
        for path in (tmp_path / "new" / "store", tmp_path / "new" / "store" / ".locks"):
            assert path.stat().st_mode & 0o777 == 0o700
        store.ping()
    finally:
        store.close()


def test_a_directory_made_unsafe_later_is_unavailable(tmp_path: Path) -> None:
    """The directory is checked again when it is recreated: a swapped-in link is not used."""
    import shutil

    store = FileStore(tmp_path / "store")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    try:
        shutil.rmtree(tmp_path / "store")
        (tmp_path / "store").symlink_to(elsewhere)
        with pytest.raises(StoreUnavailable, match="symlink"):
            store.publish("tgtest:v", "v", 30)
        assert list(elsewhere.iterdir()) == []
    finally:
        store.close()


# -- reads -----------------------------------------------------------------------------------


def test_a_record_over_the_cap_is_void(tmp_path: Path) -> None:
    from flask_tokenguard.stores.base import MAX_VALUE_BYTES

    store = FileStore(tmp_path / "store")
    try:
        value = "x" * (MAX_VALUE_BYTES - 100)  # its record (JSON, an expiry) is a little longer
        store.publish("tgtest:big", value, 30)
        assert store.read("tgtest:big") == value
        store.publish("tgtest:big", value + "x" * 200, 30)
        assert store.read("tgtest:big") is None
        path = store.value_path("tgtest:big")
        assert path.stat().st_size > MAX_VALUE_BYTES
    finally:
        store.close()


def test_ping_recreates_a_vanished_directory(tmp_path: Path) -> None:
    import shutil

    store = FileStore(tmp_path / "store")
    try:
        shutil.rmtree(tmp_path / "store")
        store.ping()
        assert (tmp_path / "store" / ".locks").is_dir()
    finally:
        store.close()


needs_inotify = pytest.mark.skipif(files._LIBC is None, reason="no inotify on this platform")


@needs_inotify
def test_a_file_waiter_wakes_on_inotify(tmp_path: Path) -> None:
    """The waiter reads before and after setting its watch, then only when its value's file
    lands: another key's publish does not make it read, and it does not poll."""
    import threading

    waiter, publisher = FileStore(tmp_path / "store"), FileStore(tmp_path / "store")
    waiter.reread_interval = 60.0
    reads = count_reads(waiter)
    other = threading.Timer(0.1, publisher.publish, ("tokenguard:result:other", "x", 30))
    mine = threading.Timer(0.3, publisher.publish, ("tokenguard:result:mine", "woke", 30))
    try:
        start = time.monotonic()
        other.start()
        mine.start()
        assert waiter.wait_for("tokenguard:result:mine", 10) == "woke"
        assert 0.25 < time.monotonic() - start < 2.0
        assert reads[0] == 3, "before the watch, after it, after the event: no polling"
    finally:
        other.join()
        mine.join()
        waiter.close()
        publisher.close()


@needs_inotify
def test_a_value_landing_as_the_watch_is_set_is_not_missed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter, publisher = FileStore(tmp_path / "store"), FileStore(tmp_path / "store")
    waiter.reread_interval = 60.0
    watch = files.watch_directory

    def watch_then_publish(directory: Path) -> int | None:
        fd = watch(directory)
        publisher.publish("tokenguard:result:between", "landed", 30)
        return fd

    monkeypatch.setattr(files, "watch_directory", watch_then_publish)
    try:
        start = time.monotonic()
        assert waiter.wait_for("tokenguard:result:between", 10) == "landed"
        assert time.monotonic() - start < 2.0, "not left to the re-read a minute later"
    finally:
        waiter.close()
        publisher.close()


class _NoInotify:
    """libc at its per-user limit of inotify instances: ``inotify_init1`` fails."""

    def inotify_init1(self, flags: int) -> int:
        return -1


@pytest.mark.parametrize("why", ["notify=False", "no inotify", "instance limit"])
def test_a_file_waiter_polls_without_inotify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    import threading

    if why == "no inotify":
        monkeypatch.setattr(files, "_LIBC", None)
    elif why == "instance limit":
        monkeypatch.setattr(files, "_LIBC", _NoInotify())
    waiter = FileStore(tmp_path / "store", notify=why != "notify=False")
    publisher = FileStore(tmp_path / "store")
    waiter.reread_interval = 60.0
    reads = count_reads(waiter)
    timer = threading.Timer(0.2, publisher.publish, ("tokenguard:result:polled", "v", 30))
    try:
        start = time.monotonic()
        timer.start()
        assert waiter.wait_for("tokenguard:result:polled", 10) == "v"
        assert time.monotonic() - start < 2.0
        assert reads[0] > 10, "it polled"
    finally:
        timer.join()
        waiter.close()
        publisher.close()


@needs_inotify
def test_a_file_waiter_polls_once_its_directory_goes_away(tmp_path: Path) -> None:
    """The watch ends with the directory; the waiter polls, and finds the value published
    into the directory made again."""
    import shutil
    import threading

    waiter, publisher = FileStore(tmp_path / "store"), FileStore(tmp_path / "store")
    waiter.reread_interval = 60.0

    def wipe_then_publish() -> None:
        shutil.rmtree(tmp_path / "store")
        time.sleep(0.1)
        publisher.publish("tokenguard:result:again", "again", 30)

    timer = threading.Timer(0.2, wipe_then_publish)
    try:
        start = time.monotonic()
        timer.start()
        assert waiter.wait_for("tokenguard:result:again", 10) == "again"
        assert time.monotonic() - start < 2.0
    finally:
        timer.join()
        waiter.close()
        publisher.close()


def _report_watches(store: FileStore, results: Any) -> None:
    results.put((list(store._watches), store.wait_for("tokenguard:result:in-child", 5)))


@needs_inotify
def test_file_waits_reuse_their_watch_but_a_forked_child_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing an inotify descriptor costs the kernel a grace period, so waits keep theirs for
    the next one; a child must not read the parent's queue of events."""
    made: list[Path] = []
    watch = files.watch_directory

    def counted(directory: Path) -> int | None:
        made.append(directory)
        return watch(directory)

    monkeypatch.setattr(files, "watch_directory", counted)
    store = FileStore(tmp_path / "store")
    try:
        for _ in range(3):
            assert store.wait_for("tokenguard:result:none", 0.01) is None
        assert len(made) == 1 and len(store._watches) == 1
        store.publish("tokenguard:result:in-child", "v", 30)
        results = FORK.Queue()
        child = FORK.Process(target=_report_watches, args=(store, results))
        child.start()
        try:
            assert results.get(timeout=10) == ([], "v")
        finally:
            child.join(10)
            results.close()
            results.join_thread()
        assert len(store._watches) == 1, "the parent keeps its own"
    finally:
        store.close()
    assert store._watches == []
