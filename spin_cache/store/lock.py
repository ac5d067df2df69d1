"""One writer per store: a lock file beside the store (`STORE.lock`, or `STORE.shard-I-of-N.lock` for a shard
worker) naming its holder. Beside, not inside: `--overwrite` deletes the store folder, never the lock.

Taking the lock is one atomic create, so exactly one of several racing writers wins:

- locally, the holder's JSON is written to a private temporary file first and then hard-linked to the lock's name
  (`link` fails if the name exists), so a lock is never seen empty or half written;
- on object storage, a conditional PUT (`If-None-Match: *`), which S3 and S3-compatible servers refuse with 412
  when the object exists.

A lock left by a process that died on this host is taken over, atomically too: locally, the racers for one stale
lock all try to create the same takeover token (named after the stale file's identity) and only the one that
creates it replaces the lock, after checking that it is still the stale one; on S3 the replacement is a PUT
conditional on the stale object's ETag (`If-Match`). A lock held from another host, an unreadable lock and a
malformed one are reported, naming the lock file and what to do.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from types import TracebackType
from typing import Any

import fsspec

from ..errors import StoreBusyError


class StoreLockedError(StoreBusyError):
    """Another process holds the store's lock (exit code from :class:`spin_cache.errors.StoreBusyError`)."""


#: How long a racer waits for a takeover or a lock being written by an older spin-cache to settle (seconds).
SETTLE_SECONDS = 5.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Malformed(Exception):
    """The lock file exists but does not hold a holder's JSON (the message says how)."""


class StoreLock:
    """The lock of one store, or of one shard worker's part of it: `acquire` and `release`, or ``with``.

    Parameters
    ----------
    url
        The store's path or URL; the lock is the file beside it, ``URL.lock`` (on object storage, an object).
    storage_options
        fsspec options for a remote store.
    shard
        ``(I, N)`` for shard worker I of N, whose own lock ``URL.shard-I-of-N.lock`` lets the N workers write side
        by side; None (default) for a whole-store writer, which also refuses while a shard worker holds its lock.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any] | None = None, shard: tuple[int, int] | None = None
    ) -> None:
        self.url = str(url).rstrip("/")
        suffix = f".shard-{shard[0]}-of-{shard[1]}.lock" if shard else ".lock"
        self.fs, self.path = fsspec.core.url_to_fs(self.url + suffix, **(storage_options or {}))
        self.shard = shard
        protocol = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.local = "file" in protocol or "local" in protocol
        self.scheme = protocol[0]
        self.held = False
        self.info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "token": secrets.token_hex(8),  # tells this holder from a later process that reuses the pid
        }
        self.payload = json.dumps(self.info).encode()

    # -- reading a lock ------------------------------------------------------------------------------------------

    def _where(self, path: str) -> str:
        return path if self.local else f"{self.scheme}://{path}"

    def _holder_text(self, info: dict[str, Any]) -> str:
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"

    def _parse(self, raw: bytes, path: str) -> dict[str, Any]:
        try:
            info = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError):
            raise _Malformed("is not JSON") from None
        if not isinstance(info, dict):
            raise _Malformed("is not a JSON object")
        pid = info.get("pid")
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise _Malformed(f"names no valid pid ({pid!r})")
        if not isinstance(info.get("host"), str):
            raise _Malformed("names no host")
        return info

    def _read_raw(self, path: str) -> bytes | None:
        """The lock's bytes; None when it does not exist. An unreadable lock is reported, naming it."""
        try:
            value: bytes = self.fs.cat_file(path)
            return value
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise StoreLockedError(
                f"{self.url} is locked by {self._where(path)}, which is a directory, not a spin-cache lock; "
                "remove it if no process is writing the store"
            ) from None
        except PermissionError as exc:
            raise StoreLockedError(
                f"{self.url}: cannot read its lock {self._where(path)} ({exc.strerror or 'permission denied'}); "
                "check the file's permissions, or delete it if no process is writing the store"
            ) from None

    def _read(self, path: str) -> tuple[bytes, dict[str, Any]] | None:
        """(raw bytes, holder) of the lock at `path`; None when there is none. An empty lock (an older spin-cache
        creates the file before writing it) is waited for briefly; a malformed one is reported, naming it."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            raw = self._read_raw(path)
            if raw is None:
                return None
            try:
                return raw, self._parse(raw, path)
            except _Malformed as why:
                if not raw.strip() and time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                raise StoreLockedError(
                    f"{self.url} is locked by {self._where(path)}, which {why if raw.strip() else 'is empty'} "
                    "(not a lock spin-cache writes); if no spin-cache process is writing the store, delete that "
                    "file and rerun"
                ) from None

    def _stale(self, info: dict[str, Any]) -> bool:
        return info.get("host") == socket.gethostname() and not _alive(int(info["pid"]))

    def _refuse(self, info: dict[str, Any], path: str) -> StoreLockedError:
        if info.get("host") != socket.gethostname():
            return StoreLockedError(
                f"{self.url} is being written by {self._holder_text(info)}; wait for it to finish (or, if that "
                f"process is gone, delete {self._where(path)} on any host and rerun)"
            )
        return StoreLockedError(
            f"{self.url} is being written by {self._holder_text(info)}; wait for it to finish "
            f"(or delete {self._where(path)} if that process is gone)"
        )

    def _check_free(self, path: str) -> None:
        """Refuse when `path` is a live lock; a stale one is left for its own writer to take over."""
        found = self._read(path)
        if found is not None and not self._stale(found[1]):
            raise self._refuse(found[1], path)

    # -- taking it ------------------------------------------------------------------------------------------------

    def acquire(self) -> StoreLock:
        """Take the lock in one atomic create and return this lock; a lock left by a dead process on this host is
        taken over. Raises StoreLockedError when a live process (or one on another host) holds it, or when the lock
        file is unreadable or malformed (the message names the file and what to do)."""
        parent = os.path.dirname(self.path)
        if parent and self.local:
            os.makedirs(parent, exist_ok=True)
        if self.shard is None:  # a whole-store writer must not run beside shard workers
            for other in self.fs.glob(self.path.removesuffix(".lock") + ".shard-*.lock"):
                self._check_free(other)
        if self.local:
            self._acquire_local()
        else:
            self._acquire_remote()
        self.held = True
        return self

    def _acquire_local(self) -> None:
        tmp = f"{self.path}.{socket.gethostname()}.{os.getpid()}.{self.info['token']}.tmp"
        with open(tmp, "xb") as f:
            f.write(self.payload)
            f.flush()
            os.fsync(f.fileno())
        try:
            deadline = time.monotonic() + SETTLE_SECONDS
            while True:
                try:
                    os.link(tmp, self.path)  # atomic: fails if a lock exists
                    return
                except FileExistsError:
                    pass
                found = self._read_local(self.path)
                if found is None:
                    continue  # released meanwhile: try again
                st, info = found
                if not self._stale(info):
                    raise self._refuse(info, self.path)
                if self._take_over_local(tmp, st):
                    return
                if time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"{self.url}: another process is taking over the stale lock {self.path} and has not "
                        f"finished; if no spin-cache process is running, delete {self.path} and "
                        f"{self.path}.takeover-* and rerun"
                    )
                time.sleep(0.05)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _read_local(self, path: str) -> tuple[os.stat_result, dict[str, Any]] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        found = self._read(path)
        if found is None:
            return None
        try:
            if not os.path.samestat(st, os.stat(path)):
                return self._read_local(path)  # replaced while reading: read the new one
        except FileNotFoundError:
            return None
        return st, found[1]

    def _take_over_local(self, tmp: str, stale: os.stat_result) -> bool:
        """Replace the stale lock whose identity is `stale` by ours; True if this process did. Every racer for the
        same stale lock tries to create the same token: one creates it and alone replaces the lock, and only if the
        lock is still that stale file."""
        token = f"{self.path}.takeover-{stale.st_ino}-{stale.st_mtime_ns}"
        try:
            os.link(tmp, token)
        except FileExistsError:
            return self._abandoned_token(token)
        try:
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            if current is None or not os.path.samestat(current, stale) or current.st_mtime_ns != stale.st_mtime_ns:
                return False  # changed meanwhile (taken over or released): start again
            os.replace(tmp, self.path)  # our private file becomes the lock
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(token)

    def _abandoned_token(self, token: str) -> bool:
        """A takeover token left by a process that died mid-takeover blocks that takeover for good: report it."""
        try:
            with open(token, "rb") as f:
                info = self._parse(f.read(), token)
        except FileNotFoundError:
            return False  # finished meanwhile
        except (_Malformed, OSError):
            return False
        if self._stale(info):
            raise StoreLockedError(
                f"{self.url}: a takeover of its stale lock was interrupted (pid {info['pid']} is gone); delete "
                f"{self.path} and {token} and rerun"
            )
        return False

    def _acquire_remote(self) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            try:
                self.fs.pipe_file(self.path, self.payload, mode="create")  # If-None-Match: *
                return
            except FileExistsError:
                pass
            except OSError as exc:
                if not _precondition_failed(exc):
                    raise
            found = self._read(self.path)
            if found is None:
                continue
            if not self._stale(found[1]):
                raise self._refuse(found[1], self.path)
            if self._take_over_remote(found[0]):
                return
            if time.monotonic() > deadline:
                raise StoreLockedError(f"{self.url}: could not take over the stale lock {self._where(self.path)}")

    def _take_over_remote(self, stale_raw: bytes) -> bool:
        """Replace the stale lock object by ours with a PUT conditional on its ETag: of several racers that read the
        same stale lock, the first PUT changes the ETag and every later one fails with 412."""
        bucket, key, _ = self.fs.split_path(self.path)
        try:
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return False
        raw = self.fs.cat_file(self.path)
        if raw != stale_raw:
            return False
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=self.payload, IfMatch=head["ETag"])
        except (FileNotFoundError, FileExistsError):
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        self.fs.invalidate_cache(self.path)
        return True

    # -- releasing ------------------------------------------------------------------------------------------------

    def release(self) -> None:
        """Delete the lock if this object took it and the file is still ours (one deleted by hand and taken by
        another process is left alone); does nothing otherwise."""
        if not self.held:
            return
        self.held = False
        try:
            raw = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return
        if raw != self.payload:
            return  # not ours any more (deleted by hand and retaken): leave it
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def _precondition_failed(exc: BaseException) -> bool:
    """Whether `exc` is S3's 412 Precondition Failed (s3fs maps it to a plain OSError for If-Match)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if "PreconditionFailed" in text or "Precondition Failed" in text or "412" in text:
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
