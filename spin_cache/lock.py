"""One writer per store: a lock file beside the store (`STORE.lock`, or `STORE.shard-I-of-N.lock` for a shard
worker) naming its holder. Beside, not inside: `--overwrite` deletes the store folder, never the lock.

Local locks are created atomically (O_EXCL). A lock left by a process that died on this host is taken over;
a lock held from another host is reported with what to do. On object storage the check is best effort.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from types import TracebackType

import fsspec

from .errors import SpinCacheError


class StoreLockedError(SpinCacheError):
    exit_code = 5


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreLock:
    def __init__(self, url: str, storage_options: dict | None = None, shard: tuple[int, int] | None = None) -> None:
        self.url = str(url).rstrip("/")
        suffix = f".shard-{shard[0]}-of-{shard[1]}.lock" if shard else ".lock"
        self.fs, self.path = fsspec.core.url_to_fs(self.url + suffix, **(storage_options or {}))
        self.shard = shard
        self.local = self.fs.protocol in ("file", ("file", "local")) or "file" in self.fs.protocol
        self.held = False

    def _holder_text(self, info: dict) -> str:
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"

    def _read(self, path: str) -> dict | None:
        try:
            with self.fs.open(path, "r") as f:
                return json.loads(f.read() or "{}")
        except (FileNotFoundError, ValueError):
            return None

    def _stale(self, info: dict) -> bool:
        return info.get("host") == socket.gethostname() and not _alive(int(info.get("pid", 0)))

    def _check_free(self, path: str) -> None:
        info = self._read(path)
        if info is None:
            return
        if self._stale(info):
            self.fs.rm(path)
            return
        raise StoreLockedError(
            f"{self.url} is being written by {self._holder_text(info)}; wait for it to finish "
            f"(or delete {path} if that process is gone)"
        )

    def acquire(self) -> StoreLock:
        parent = os.path.dirname(self.path)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        if self.shard is None:  # a whole-store writer must not run beside shard workers
            for other in self.fs.glob(self.url.split("://")[-1] + ".shard-*.lock"):
                self._check_free(other)
        self._check_free(self.path)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        payload = json.dumps(info)
        if self.local:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_free(self.path)  # raced with another writer: report it
                raise StoreLockedError(f"{self.url} is being written by another process; try again") from None
            with os.fdopen(fd, "w") as f:
                f.write(payload)
        else:
            with self.fs.open(self.path, "w") as f:
                f.write(payload)
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)
            self.held = False

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
