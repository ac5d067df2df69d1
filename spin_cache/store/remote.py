"""Sharing stores: push a finished store to another place (S3-compatible or local), list the stores under a prefix,
parse `--storage-option key=value` flags, and turn remote-storage failures into one-line errors.

A push copies the store file by file, re-reads what arrived (every chunk through its crc32c codec, the examples
table and the side files byte for byte) and only then writes the destination's root `zarr.json`: until that last
write, the destination is not a store at all, so a half-pushed store is never opened, listed or used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import zarr

from ..errors import InputError, IntegrityError, SpinCacheError, StoreMismatchError
from ..outputs import check_store_destination
from .access import _fs, array_name, zarr_store
from .activation_store import ActivationStore

ROOT_META = "zarr.json"
BATCH_BYTES = 64 * 2**20  # files copied per round trip, at most this many bytes together

# ---- locations and options -------------------------------------------------------------------------------------


def is_remote(url: str) -> bool:
    """Whether `url` names a remote location: a URL with a scheme other than ``file://``."""
    return "://" in str(url) and not str(url).startswith("file://")


def parse_storage_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """`["key=value", "client_kwargs.endpoint_url=http://..."]` -> nested dict (dots nest; values are JSON when
    they parse as JSON — numbers, true/false, null — else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--storage-option {pair!r}: expected KEY=VALUE, e.g. endpoint_url=http://127.0.0.1:9000")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--storage-option {pair!r}: {part!r} was already given a value")
        node[leaf] = value
    return out


def resolve_storage_options(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Options for fsspec: for s3:// URLs the endpoint also comes from $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL
    (credentials from $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY are read by botocore itself)."""
    opts = dict(storage_options or {})
    if str(url).startswith(("s3://", "s3a://")):
        kwargs = opts.get("client_kwargs") or {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in kwargs:
            opts["endpoint_url"] = endpoint
    return opts or None


def _endpoint(url: str, storage_options: dict[str, Any] | None) -> str:
    opts = storage_options or {}
    return str(
        opts.get("endpoint_url")
        or (opts.get("client_kwargs") or {}).get("endpoint_url")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "the default AWS endpoint"
    )


# ---- errors ----------------------------------------------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        todo += list(getattr(e, "exceptions", ()) or ())  # ExceptionGroup


def remote_error(
    exc: BaseException, url: str | None, storage_options: dict[str, Any] | None = None
) -> SpinCacheError | None:
    """The one-line error for a storage failure (no credentials, access denied, missing bucket, endpoint down);
    None when `exc` is not one (then it is a bug and should surface as one)."""
    where = url or "the store"
    names = {type(e).__name__ for e in _chain(exc)}
    texts = " | ".join(str(e) for e in _chain(exc))
    if isinstance(exc, SpinCacheError):
        return exc
    local = _local_error(exc)
    if local is not None:
        return local
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return InputError(
            f"{where}: no credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or pass "
            "--storage-option key=... --storage-option secret=..., or anon=true for a public bucket)"
        )
    if names & {
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ClientConnectorError",
        "ServerDisconnectedError",
    } or ("Could not connect to the endpoint" in texts or "Cannot connect to host" in texts):
        return InputError(
            f"{where}: cannot reach {_endpoint(str(url), storage_options)}; check that the server is up and the "
            "endpoint is right ($AWS_ENDPOINT_URL or --storage-option endpoint_url=URL)"
        )
    if "NoSuchBucket" in texts or "bucket does not exist" in texts.lower():
        return InputError(f"{where}: the bucket does not exist; check the URL or create the bucket first")
    if (
        (names & {"PermissionError"} and (is_remote(str(url or "")) or names & _REMOTE_ERRORS))
        or "AccessDenied" in texts
        or "InvalidAccessKeyId" in texts
        or "SignatureDoesNotMatch" in texts
    ):
        return InputError(
            f"{where}: access denied; check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and "
            "their permissions on this bucket"
        )
    if names & {"PermissionError"}:
        return InputError(f"{where}: permission denied ({_chain_text(exc)}); check the permissions of its files")
    if names & {"ConnectionError", "ConnectionRefusedError", "TimeoutError", "ReadTimeoutError", "ClientOSError"}:
        return InputError(
            f"{where}: the connection to {_endpoint(str(url), storage_options)} failed ({type(exc).__name__}); "
            "check that the server is up and retry"
        )
    return None


#: Exception types that only a remote store raises (botocore, aiohttp); a local file's error carries none of them.
_REMOTE_ERRORS = {"ClientError", "BotoCoreError", "ClientResponseError", "ClientOSError", "HTTPClientError"}

#: Local OS errors a user can fix, and what to do about each.
_LOCAL_ADVICE = {
    errno.EACCES: ("permission denied", "check its permissions"),
    errno.EPERM: ("operation not permitted", "check its permissions"),
    errno.EROFS: ("read-only file system", "write somewhere writable"),
    errno.ENOSPC: ("no space left on device", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
}


def _local_error(exc: BaseException) -> InputError | None:
    """A local file's permission, read-only or disk-full error, naming the file; None for anything else (a
    remote store's errors carry no local file name and come with botocore's or aiohttp's own exceptions)."""
    chain = list(_chain(exc))
    if {type(e).__name__ for e in chain} & _REMOTE_ERRORS:
        return None
    for e in chain:
        if isinstance(e, OSError) and e.errno in _LOCAL_ADVICE and (e.filename or e.filename2):
            what, todo = _LOCAL_ADVICE[e.errno]
            path = os.fsdecode(e.filename if e.filename else e.filename2)
            return InputError(f"{what}: {path}; {todo}")
        if isinstance(e, PermissionError) and not (e.filename or e.filename2):
            return None  # no file named: let the caller decide (remote access denied, or report as is)
    return None


def _chain_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def remote_errors(url: str | None, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Turn storage failures inside the block into one-line `InputError`s; other exceptions pass unchanged."""
    try:
        yield
    except SpinCacheError:
        raise
    except Exception as exc:
        err = remote_error(exc, url, storage_options)
        if err is None:
            raise
        raise err from exc


def _check_reachable(url: str, storage_options: dict[str, Any] | None) -> None:
    """Fail early, in one line, when the bucket is missing or the endpoint or credentials do not work (one quick
    request without retries, so a server that is down is reported in about a second, not after minutes)."""
    if not is_remote(url):
        return
    protocol = str(url).split("://", 1)[0]
    _, root = _fs(url, storage_options)
    bucket = root.split("/", 1)[0]
    if protocol not in ("s3", "s3a"):
        return
    import fsspec

    opts = dict(storage_options or {})
    config = dict(opts.get("config_kwargs") or {})
    config.setdefault("retries", {"max_attempts": 1})
    config.setdefault("connect_timeout", 5)
    fs = fsspec.filesystem("s3", **(opts | {"config_kwargs": config, "skip_instance_cache": True}))
    try:
        with remote_errors(url, storage_options):
            fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError as exc:
        raise InputError(
            f"{url}: the bucket {bucket!r} does not exist; check the URL or create the bucket first"
        ) from exc


def open_store(url: str, storage_options: dict[str, Any] | None = None, **kwargs: Any) -> ActivationStore:
    """`ActivationStore.open` with env endpoints applied and one-line errors for remote failures."""
    opts = resolve_storage_options(url, storage_options)
    _check_reachable(url, opts)
    with remote_errors(url, opts):
        return ActivationStore.open(url, storage_options=opts, **kwargs)


# ---- push ------------------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _batches(files: list[tuple[str, int]], limit: int = BATCH_BYTES) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for rel, n in files:
        if batch and size + n > limit:
            yield batch
            batch, size = [], 0
        batch.append(rel)
        size += n
    if batch:
        yield batch


def push(
    store_url: str,
    dest_url: str,
    *,
    storage_options: dict[str, Any] | None = None,
    dest_options: dict[str, Any] | None = None,
    progress: bool = False,
) -> ActivationStore:
    """Copy a finished store to `dest_url`, verify what arrived, then write the destination's root zarr.json.

    Refuses an incomplete or damaged source and a destination that already holds another store. Pushing the same
    store again where it already is (same fingerprint, complete) is a no-op.
    """
    from tqdm.auto import tqdm

    src_opts = resolve_storage_options(store_url, storage_options)
    dst_opts = resolve_storage_options(dest_url, dest_options)
    src = open_store(store_url, src_opts)
    if not src.is_complete:
        raise IntegrityError(
            f"{store_url}: the store is incomplete ({src.count_committed()}/{src.layout.n_blocks} blocks); finish it "
            "with the same `spin-cache extract` command before pushing"
        )
    if src.manifest_record.expected_fingerprint() != src.fingerprint:
        raise IntegrityError(f"{store_url}: the manifest does not match its fingerprint; run `spin-cache verify`")
    _check_reachable(dest_url, dst_opts)
    sfs, sroot = _fs(store_url, src_opts)
    dfs, droot = _fs(dest_url, dst_opts)
    with remote_errors(dest_url, dst_opts):
        _check_push_destination(dfs, droot, dest_url, sfs, sroot)
        if dfs.exists(f"{droot}/{ROOT_META}"):
            there = ActivationStore.open(dest_url, storage_options=dst_opts)
            if there.fingerprint == src.fingerprint and there.is_complete:
                return there
            raise StoreMismatchError(
                f"{dest_url}: already holds another store (fingerprint {there.fingerprint[:16]}, {there.status}); "
                "push to another prefix or delete it first"
            )
    with remote_errors(store_url, src_opts):
        listing = sfs.find(sroot, detail=True)
    files = sorted(
        (path[len(sroot) + 1 :], int(meta.get("size") or 0))
        for path, meta in listing.items()
        if meta.get("type", "file") != "directory"
    )
    body = [(rel, n) for rel, n in files if rel != ROOT_META]
    small_hashes: dict[str, str] = {}  # non-chunk files: compared byte for byte after the copy
    bar = tqdm(total=sum(n for _, n in body), desc="push", unit="B", unit_scale=True, disable=not progress)
    local_dest = not is_remote(dest_url)
    with remote_errors(dest_url, dst_opts):
        for batch in _batches(body):
            with remote_errors(store_url, src_opts):
                data = sfs.cat([f"{sroot}/{rel}" for rel in batch])
            blobs = {rel: data[f"{sroot}/{rel}"] for rel in batch}
            for rel, blob in blobs.items():
                if "/c/" not in f"/{rel}":
                    small_hashes[rel] = _sha256(blob)
            if local_dest:
                for parent in {os.path.dirname(f"{droot}/{rel}") for rel in batch}:
                    dfs.makedirs(parent, exist_ok=True)
            dfs.pipe({f"{droot}/{rel}": blob for rel, blob in blobs.items()})
            bar.update(sum(len(b) for b in blobs.values()))
        bar.close()
        _verify_arrival(src, dest_url, dst_opts, body, small_hashes, progress)
        with remote_errors(store_url, src_opts):
            root_meta = sfs.cat_file(f"{sroot}/{ROOT_META}")
        dfs.pipe_file(f"{droot}/{ROOT_META}", root_meta)
        try:
            pushed = ActivationStore.open(dest_url, storage_options=dst_opts)
            ok = pushed.fingerprint == src.fingerprint == pushed.manifest_record.expected_fingerprint()
        except SpinCacheError:
            ok = False
        if not ok:
            dfs.rm_file(f"{droot}/{ROOT_META}")
            raise IntegrityError(f"{dest_url}: the pushed manifest does not read back as sent; push again")
    return pushed


def _check_push_destination(dfs: Any, droot: str, dest_url: str, sfs: Any, sroot: str) -> None:
    """A push writes only to a missing or empty place, a spin-cache store, or the remains of an interrupted push of
    this same store (every file there is one the store has: the root zarr.json is written last); anything else is
    refused, naming the destination."""
    try:
        check_store_destination(dfs, droot, dest_url, option="push destination")
    except InputError:
        if not dfs.isdir(droot):
            raise
        there = {p[len(droot) + 1 :] for p in dfs.find(droot)}
        ours = {p[len(sroot) + 1 :] for p in sfs.find(sroot)}
        if not there or not there <= ours:
            raise


def _verify_arrival(
    src: ActivationStore,
    dest_url: str,
    dest_options: dict[str, Any] | None,
    body: list[tuple[str, int]],
    small_hashes: dict[str, str],
    progress: bool,
) -> None:
    """Every file arrived with its size, side files byte for byte, and every chunk decodes (crc32c checked)."""
    from tqdm.auto import tqdm

    dfs, droot = _fs(dest_url, dest_options)
    arrived = {
        path[len(droot) + 1 :]: int(meta.get("size") or 0)
        for path, meta in dfs.find(droot, detail=True).items()
        if meta.get("type", "file") != "directory"
    }
    wrong = [rel for rel, n in body if arrived.get(rel) != n]
    if wrong:
        raise IntegrityError(f"{dest_url}: {len(wrong)} file(s) did not arrive intact (first: {wrong[0]}); push again")
    back = dfs.cat([f"{droot}/{rel}" for rel in small_hashes])
    for rel, digest in small_hashes.items():
        if _sha256(back[f"{droot}/{rel}"]) != digest:
            raise IntegrityError(f"{dest_url}/{rel}: differs from the source after the copy; push again")
    if src.side.examples not in small_hashes:
        raise IntegrityError(f"{src.url}: {src.side.examples} is missing; the store is damaged")
    zstore = zarr_store(dest_url, read_only=True, storage_options=dest_options)
    layout = src.layout
    keys = layout.array_keys()
    bar = tqdm(total=len(keys), desc="verify", unit="array", disable=not progress)
    for kind, pooling, layer in keys:
        name = array_name(kind, pooling, layer)
        arr = zarr.open_array(zstore, path=name, mode="r")
        for block in range(layout.n_blocks):
            start, stop = layout.block_range(block)
            try:
                arr[start:stop]
            except Exception as exc:
                if remote_error(exc, dest_url, dest_options) is not None:
                    raise
                raise IntegrityError(
                    f"{dest_url}: {name} chunk c/{block}/0 is damaged at the destination ({exc}); run `spin-cache "
                    "verify` on the source, then push again"
                ) from exc
        bar.update(1)
    bar.close()


# ---- ls ----------------------------------------------------------------------------------------------------------


def list_stores(url_or_dir: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The stores at `url_or_dir` and one or two levels below it (read from their zarr.json only: no arrays)."""
    opts = resolve_storage_options(url_or_dir, storage_options)
    _check_reachable(url_or_dir, opts)
    fs, root = _fs(url_or_dir, opts)
    base = str(url_or_dir).rstrip("/")
    protocol = base.split("://", 1)[0] + "://" if "://" in base else ""
    found: list[dict[str, Any]] = []
    with remote_errors(url_or_dir, opts):
        if not fs.exists(root):
            raise InputError(f"{url_or_dir}: no such directory or prefix")
        frontier = [root]
        for depth in range(3):
            nxt: list[str] = []
            for folder in frontier:
                try:
                    entries = fs.ls(folder, detail=True)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                names = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries}
                entry = _store_entry(fs, folder, names, protocol)
                if entry is not None:
                    found.append(entry)
                    continue  # never look inside a store
                if depth < 2:
                    nxt += [e["name"].rstrip("/") for e in entries if e.get("type") == "directory"]
            frontier = nxt
    return sorted(found, key=lambda e: e["url"])


def _store_entry(fs: Any, folder: str, names: dict[str, Any], protocol: str) -> dict[str, Any] | None:
    if ROOT_META not in names:
        return None
    try:
        meta = json.loads(fs.cat_file(f"{folder}/{ROOT_META}"))
        manifest = (meta.get("attributes") or {}).get("spin_cache")
    except (ValueError, OSError, AttributeError):
        return None
    if not isinstance(manifest, dict) or "layout" not in manifest:
        return None
    model = manifest.get("model") or {}
    dataset = manifest.get("dataset") or {}
    url = folder if not protocol or protocol == "file://" else f"{protocol}{folder}"
    return {
        "url": url,
        "model": model.get("name"),
        "dataset": dataset.get("name"),
        "rows": int((manifest.get("layout") or {}).get("n_rows", 0)),
        "size": int(fs.du(folder, total=True)),
        "status": manifest.get("status", "incomplete"),
        "fingerprint": manifest.get("fingerprint"),
    }


def format_listing(entries: list[dict[str, Any]]) -> str:
    """`spin-cache ls` for people: one line per store."""
    if not entries:
        return "no stores found"
    lines = [f"{'fingerprint':16s} {'status':10s} {'rows':>8s} {'size':>10s}  {'model':24s} {'dataset':16s} url"]
    for e in entries:
        lines.append(
            f"{(e['fingerprint'] or '?')[:16]:16s} {e['status']:10s} {e['rows']:8d} {e['size'] / 2**20:8.1f}Mi  "
            f"{e['model'] or '?':24s} {e['dataset'] or '?':16s} {e['url']}"
        )
    return "\n".join(lines)
