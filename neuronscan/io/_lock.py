"""One writer per run directory: ``RUN/run.lock``.

A local run directory is locked with ``flock`` on ``run.lock``: the kernel drops the lock when the
holder exits, however it exits, so a crashed run never leaves a stale lock behind; the file holds the
holder's host, pid, command and start time for the message a second writer gets.

An ``s3://`` run directory has no ``flock``: ``run.lock`` is a lease object created with a conditional
write (``If-None-Match: *``), so of two writers that start together exactly one creates it. The
holder renews the lease (``heartbeat``) every ``S3_LEASE_RENEW_S`` seconds and deletes it when done;
a lease not renewed for ``S3_LEASE_TTL_S`` seconds is stale (its holder died) and is taken over.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import threading
import time
import uuid

from neuronscan.errors import NeuronscanError

__all__ = ["RunLock", "RunLockedError", "S3_LEASE_TTL_S", "S3_LEASE_RENEW_S", "check_holder"]

S3_LEASE_TTL_S = 300.0
"""An S3 lease whose heartbeat is older than this is stale (its holder is gone)."""

S3_LEASE_RENEW_S = 30.0
"""How often the holder of an S3 lease renews its heartbeat."""


class RunLockedError(NeuronscanError):
    """Another neuronscan process is writing this run directory; the message names it."""


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process (it has not written its details yet)"
    return (f"{holder.get('command', 'neuronscan')} on host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, "
            f"since {holder.get('started', '?')}")


def check_holder(root: str, token: str) -> None:
    """Raise `RunLockedError` unless the writer holding ``root``'s lock is the one with ``token``.

    Ray workers of a driver that was killed can outlive it by seconds; a part writer calls this before it
    commits, so a worker of a dead run never commits into a run that another process now holds.
    """
    from neuronscan.io._fs import get_fs, join

    fs, path = get_fs(join(str(root).rstrip("/"), "run.lock"))
    try:
        holder = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        holder = None
    if not isinstance(holder, dict) or holder.get("token") != token:
        raise RunLockedError(f"run {root} is now held by {_describe(holder)}: this writer's run ended; its part "
                             "is not committed")


class RunLock:
    """Exclusive write access to one run directory, held from `acquire` to `release` (or the ``with`` block).

    Example:
        >>> with RunLock("runs/shapesnet/demo", command="neuronscan run"):
        ...     pass  # probe, score and report write here; a second writer is refused at once

    Raises (from `acquire`):
        RunLockedError: another process holds the lock; the message gives its host, pid, command and start.
    """

    def __init__(self, root: str, *, command: str | None = None):
        from neuronscan.io._fs import is_remote, join

        self.root = str(root).rstrip("/")
        self.uri = join(self.root, "run.lock")
        self.remote = is_remote(self.root)
        self.holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": command or " ".join(["neuronscan", *sys.argv[1:2]]),
            "started": _now(),
            "token": uuid.uuid4().hex,
        }
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None or self._thread is not None

    def _refused(self, holder: dict | None) -> RunLockedError:
        return RunLockedError(
            f"run {self.root} is being written by {_describe(holder)}; two writers would delete each other's "
            "parts. Wait for it to finish (or stop it), or use another run id"
        )

    # -- local: flock --------------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        if self.held:
            return self
        if self.remote:
            self._acquire_s3()
            return self
        import fcntl

        os.makedirs(self.root, exist_ok=True)
        fd = os.open(self.uri, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                raw = os.pread(fd, 65536, 0)
                holder = json.loads(raw) if raw.strip() else None
            except (OSError, ValueError):
                holder = None
            os.close(fd)
            raise self._refused(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self.holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self._release_s3()

    # -- s3: a conditional-write lease -----------------------------------------------------------------
    def _fs(self):
        from neuronscan.io._fs import get_fs

        return get_fs(self.uri)

    def _read_lease(self) -> dict | None:
        fs, path = self._fs()
        try:
            return json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}

    def _create_lease(self) -> bool:
        """Create ``run.lock`` only if it does not exist (S3 ``If-None-Match: *``); False if it does."""
        fs, path = self._fs()
        body = json.dumps({**self.holder, "heartbeat": time.time()}).encode()
        try:
            fs.pipe_file(path, body, mode="create")  # PutObject with IfNoneMatch="*"
        except FileExistsError:
            return False
        return True

    def _acquire_s3(self) -> None:
        for _ in range(2):
            if self._create_lease():
                break
            lease = self._read_lease()
            if lease is None:  # released between our two requests: try once more
                continue
            age = time.time() - float(lease.get("heartbeat", 0) or 0)
            if lease and age < S3_LEASE_TTL_S:
                raise self._refused(lease)
            # A stale lease: its holder stopped renewing it. Remove it and race for a new one.
            fs, path = self._fs()
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass
        else:
            raise self._refused(self._read_lease())
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="neuronscan-run-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        fs, path = self._fs()
        while not self._stop.wait(S3_LEASE_RENEW_S):
            lease = self._read_lease()
            if not lease or lease.get("token") != self.holder["token"]:
                print(f"warning: the lease on {self.root} was taken by {_describe(lease)}", file=sys.stderr)
                return
            fs.pipe_file(path, json.dumps({**self.holder, "heartbeat": time.time()}).encode())

    def _release_s3(self) -> None:
        lease = self._read_lease()
        if lease and lease.get("token") == self.holder["token"]:
            fs, path = self._fs()
            try:
                fs.rm_file(path)
            except FileNotFoundError:
                pass
