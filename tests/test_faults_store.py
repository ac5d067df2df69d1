"""Faults around stores (issue 18): foreign output paths are never deleted, edited manifests and damaged or missing
chunks are named on every read, the store lock is taken atomically (real racing processes, local and on a loopback
S3 server), local permission errors name the file, and a cache hit needs a complete, consistent store."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spin_cache.cli import main
from spin_cache.errors import InputError, IntegrityError
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.layout import COMMITS_DIR, EXAMPLES_FILE
from spin_cache.store.lock import StoreLock, StoreLockedError
from spin_cache.store.manifest import MANIFEST_HASH_KEY
from spin_cache.synth import make_synthetic_store

TINY = {"n_rows": 300, "n_layers": 2, "width": 32, "informative": {2: 3}, "block_rows": 128}
SHARD = "ffn/mean/layer_01/c/1/0"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def synth_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "base"
    make_synthetic_store(out, **TINY)
    return out


@pytest.fixture
def synth(synth_base, tmp_path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(synth_base, path)
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    return err


def edit_manifest(path: Path, edit) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"]["spin_cache"])
    (path / "zarr.json").write_text(json.dumps(meta))


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# ---- item 1: an existing path that is not a store is refused, never deleted -------------------------------------


def extract_args(tiny_sst2: dict, out: Path) -> list[str]:
    args = ["extract", "--train", tiny_sst2["train"], "--dev", tiny_sst2["dev"], "--test", tiny_sst2["test"]]
    return [*args, "--out", str(out), "--block-rows", "32", "--batch-size", "8", "--quiet"]


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_extract_refuses_a_foreign_directory_and_keeps_its_files(tiny_sst2, tmp_path, capsys, overwrite):
    out = tmp_path / "v"
    out.mkdir()
    (out / "keep.txt").write_text("x\n")
    argv = extract_args(tiny_sst2, out) + (["--overwrite"] if overwrite else [])
    assert main(argv) == 2
    line = one_line(capsys)
    assert str(out) in line and "not a spin-cache store" in line and "keep.txt" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "x\n"


def test_extract_refuses_a_file(tiny_sst2, tmp_path, capsys):
    out = tmp_path / "f"
    out.write_text("precious")
    assert main([*extract_args(tiny_sst2, out), "--overwrite"]) == 2
    assert "is a file" in one_line(capsys)
    assert out.read_text() == "precious"


def test_create_never_removes_a_foreign_directory(synth, tmp_path):
    store = ActivationStore.open(str(synth))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a spin-cache store"):
        ActivationStore.create(str(foreign), store.manifest, store.examples, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="already holds a spin-cache store"):
        ActivationStore.create(str(synth), store.manifest, store.examples)  # no overwrite: the store stays
    assert ActivationStore.open(str(synth)).is_complete


def test_synth_refuses_foreign_paths_and_overwrite_replaces_only_a_store(synth, tmp_path):
    foreign = tmp_path / "v"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"keep\.txt"):
            make_synthetic_store(foreign, **TINY, overwrite=overwrite)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    # --overwrite replaces a store, and only what a store holds: a file someone put inside it stays.
    (synth / "notes.txt").write_text("mine")
    other = make_synthetic_store(synth, **(TINY | {"seed": 7}), overwrite=True)
    assert other.verify() == [] and other.manifest["synthetic"]["params"]["seed"] == 7
    assert (synth / "notes.txt").read_text() == "mine"


def test_push_refuses_a_foreign_destination(synth, tmp_path):
    from spin_cache.store.remote import push

    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("x")
    with pytest.raises(InputError, match=r"push destination .*not a spin-cache store"):
        push(str(synth), str(dest))
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]
    # the remains of an interrupted push of this store (no root zarr.json yet) are resumed
    partial = tmp_path / "partial"
    shutil.copytree(synth, partial)
    (partial / "zarr.json").unlink()
    assert push(str(synth), str(partial)).fingerprint == ActivationStore.open(str(synth)).fingerprint


# ---- item 7: the manifest hash is checked on every open ---------------------------------------------------------


def test_an_edited_manifest_is_refused_on_read_and_by_probe(synth, tmp_path, capsys):
    edit_manifest(synth, lambda m: m["dataset"].update(label_names=["b", "a"]))
    store = ActivationStore.open(str(synth))
    assert store.manifest_problem and "manifest_sha256" in store.manifest_problem
    for use in (lambda: store.read("ffn", "mean", 1), lambda: store.examples, store.info):
        with pytest.raises(IntegrityError, match=f"{synth}: zarr.json's manifest was edited"):
            use()
    assert any("manifest_sha256" in p for p in store.verify())  # verify still opens it and names the edit
    grid = ["--C", "0.1", "--scheduler", "sync", "--quiet"]
    assert main(["probe", str(synth), "--out", str(tmp_path / "p"), *grid]) == 4
    assert "manifest was edited" in one_line(capsys)
    assert main(["info", str(synth)]) == 4
    assert "manifest was edited" in one_line(capsys)


def test_stores_without_a_hash_and_incomplete_stores_still_open(synth):
    edit_manifest(synth, lambda m: m.pop(MANIFEST_HASH_KEY))  # written before the hash existed
    assert ActivationStore.open(str(synth)).read("ffn", "mean", 1).shape == (TINY["n_rows"], TINY["width"])
    # a store being written: its status and run change before mark_complete rewrites the hash
    edit_manifest(synth, lambda m: m.update(status="incomplete", run={"partial": True}, **{MANIFEST_HASH_KEY: "0"}))
    store = ActivationStore.open(str(synth))
    assert not store.is_complete and store.manifest_problem is None
    assert make_synthetic_store(synth, **TINY).is_complete  # resumed, and the hash is written again


# ---- item 8: the store lock ---------------------------------------------------------------------------------------


RACER = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from spin_cache.store import lock

    store, barrier, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    real_alive, calls = lock._alive, []

    def alive(pid):
        # The first liveness check is of the stale lock's dead pid: wait there until both racers have read it, so
        # both decide to take the same stale lock over.
        if not calls:
            calls.append(pid)
            (barrier / f"ready-{me}").touch()
            deadline = time.time() + 60
            while not all((barrier / f"ready-{x}").exists() for x in ("a", "b")) and time.time() < deadline:
                time.sleep(0.01)
        return real_alive(pid)

    lock._alive = alive
    try:
        with lock.StoreLock(store):
            (barrier / f"result-{me}").write_text("won")
            deadline = time.time() + 60  # hold the lock until the test has seen both outcomes
            while not (barrier / "release").exists() and time.time() < deadline:
                time.sleep(0.01)
    except lock.StoreLockedError as exc:
        (barrier / f"result-{me}").write_text("locked: " + str(exc))
    """
)


def test_two_processes_taking_over_one_stale_lock_exactly_one_wins(tmp_path):
    store = tmp_path / "store"
    Path(f"{store}.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "started": "x"}))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    racers = {
        me: subprocess.Popen([sys.executable, "-c", RACER, str(store), str(barrier), me], env=env, cwd=REPO)
        for me in ("a", "b")
    }
    try:
        results = {}
        for me, proc in racers.items():
            while not (barrier / f"result-{me}").exists():
                assert proc.poll() is None, f"racer {me} exited with {proc.returncode} before reporting"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            results[me] = (barrier / f"result-{me}").read_text()
        won = [me for me, text in results.items() if text == "won"]
        assert len(won) == 1, results
        loser = "b" if won == ["a"] else "a"
        assert results[loser].startswith("locked: ") and f"pid {racers[won[0]].pid}" in results[loser]
        holder = json.loads(Path(f"{store}.lock").read_text())
        assert holder["pid"] == racers[won[0]].pid
    finally:
        (barrier / "release").touch()
        for proc in racers.values():
            proc.wait(timeout=60)
    assert all(proc.returncode == 0 for proc in racers.values())
    assert not Path(f"{store}.lock").exists()  # released by the winner
    assert not list(tmp_path.glob("store.lock.*"))  # no temporary or takeover files left behind


@pytest.mark.parametrize(
    "content, why",
    [
        (json.dumps({"host": socket.gethostname(), "pid": "12x", "started": "x"}), "no valid pid"),
        ("not json at all", "not JSON"),
        ("[1, 2]", "not a JSON object"),
    ],
    ids=["bad-pid", "not-json", "not-object"],
)
def test_a_malformed_lock_names_the_file_and_what_to_do(tmp_path, content, why):
    lock_path = tmp_path / "store.lock"
    lock_path.write_text(content)
    with pytest.raises(StoreLockedError) as info:
        StoreLock(str(tmp_path / "store")).acquire()
    message = str(info.value)
    assert str(lock_path) in message and why in message and "delete that file" in message
    assert len(message.splitlines()) == 1
    assert lock_path.read_text() == content  # never deleted on a guess


def test_an_empty_or_unreadable_lock_names_the_file(tmp_path, monkeypatch):
    import spin_cache.store.lock as lock_module

    monkeypatch.setattr(lock_module, "SETTLE_SECONDS", 0.2)
    empty = tmp_path / "a.lock"
    empty.write_text("")
    with pytest.raises(StoreLockedError, match=f"{empty}, which is empty"):
        StoreLock(str(tmp_path / "a")).acquire()
    folder = tmp_path / "b.lock"  # cannot be read as a file (as root, chmod 000 would not stop reading)
    folder.mkdir()
    with pytest.raises(StoreLockedError, match=f"{folder}, which is a directory"):
        StoreLock(str(tmp_path / "b")).acquire()
    if os.geteuid() != 0:
        unreadable = tmp_path / "c.lock"
        unreadable.write_text("{}")
        unreadable.chmod(0)
        with pytest.raises(StoreLockedError, match=f"cannot read its lock {unreadable}"):
            StoreLock(str(tmp_path / "c")).acquire()


def test_a_live_lock_is_refused_and_a_stale_one_taken_over_and_released(tmp_path):
    url = str(tmp_path / "store")
    with StoreLock(url) as first:
        with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
            StoreLock(url).acquire()
        assert json.loads(Path(url + ".lock").read_text())["token"] == first.info["token"]
    assert not Path(url + ".lock").exists()
    Path(url + ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "started": "x"}))
    with StoreLock(url) as taken:
        assert json.loads(Path(url + ".lock").read_text())["token"] == taken.info["token"]
    assert not list(tmp_path.glob("store.lock*"))


# ---- item 9: damaged and missing chunks are named on read ---------------------------------------------------------


def test_flipped_bytes_in_a_shard_are_named_on_read(synth):
    shard = synth / SHARD
    data = bytearray(shard.read_bytes())
    data[60] ^= 0xFF
    data[61] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore.open(str(synth))
    with pytest.raises(IntegrityError) as info:
        store.read("ffn", "mean", 1)
    message = str(info.value)
    assert "ffn/mean/layer_01" in message and "c/1/0" in message and len(message.splitlines()) == 1
    store.read("ffn", "mean", 2)  # other arrays read as before


def test_a_missing_shard_is_named_not_read_as_zeros(synth):
    (synth / SHARD).unlink()
    store = ActivationStore.open(str(synth))
    with pytest.raises(IntegrityError, match=f"chunk {SHARD} is missing"):
        store.read("ffn", "mean", 1, columns=[3])
    # a store still being written lacks its uncommitted blocks by design: they read as the fill value there
    edit_manifest(synth, lambda m: m.update(status="incomplete"))
    assert not ActivationStore.open(str(synth)).read("ffn", "mean", 1, allow_incomplete=True)[128:256].any()


# ---- item 10: local permission errors name the file ---------------------------------------------------------------


def test_a_local_permission_error_names_the_file_not_s3_credentials():
    from spin_cache.store.remote import remote_error

    path = "/data/stores/x/examples.parquet"
    err = remote_error(PermissionError(errno.EACCES, os.strerror(errno.EACCES), path), "stores/x")
    assert isinstance(err, InputError) and str(err) == f"permission denied: {path}; check its permissions"
    full = remote_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path), None)
    assert str(full) == f"no space left on device: {path}; free some space or write elsewhere"
    assert "AWS_ACCESS_KEY_ID" not in str(remote_error(PermissionError("no file named"), "stores/x"))


def test_s3_access_denied_still_names_the_credentials():
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    from spin_cache.store.remote import remote_error

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    try:
        raise translate_boto_error(denied) from denied
    except PermissionError as exc:
        err = remote_error(exc, "s3://bucket/store")
    assert "access denied" in str(err) and "AWS_ACCESS_KEY_ID" in str(err) and "s3://bucket/store" in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="as root, chmod 000 does not stop reading: covered by the test above")
def test_an_unreadable_shard_is_reported_as_a_local_permission_problem(synth, capsys):
    (synth / SHARD).chmod(0)
    with pytest.raises(InputError, match=f"permission denied: .*{SHARD}; check its permissions"):
        ActivationStore.open(str(synth)).read("ffn", "mean", 1)
    (synth / EXAMPLES_FILE).chmod(0)
    assert main(["info", str(synth)]) in (2, 4)
    line = one_line(capsys)
    assert "AWS" not in line and "permission denied" in line


# ---- item 11: a cache hit needs a complete, consistent store -------------------------------------------------------


def test_extract_is_no_cache_hit_on_a_store_without_examples(small_store, tiny_sst2, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(small_store, out)
    assert main([*extract_args(tiny_sst2, out), "--json"]) == 0  # intact: a cache hit
    assert json.loads(capsys.readouterr().out)["cache_hit"] is True
    (out / EXAMPLES_FILE).unlink()
    assert main(extract_args(tiny_sst2, out)) == 4
    line = one_line(capsys)
    assert f"{EXAMPLES_FILE} is missing" in line and "--overwrite" in line
    assert main(["info", str(out)]) == 4
    assert f"{EXAMPLES_FILE} is missing" in one_line(capsys)
    assert main([*extract_args(tiny_sst2, out), "--overwrite"]) == 0  # the repair the message names
    assert ActivationStore.open(str(out)).verify() == []


def test_missing_commit_markers_or_rows_are_no_cache_hit(synth):
    (synth / COMMITS_DIR / "block_000001.json").unlink()
    with pytest.raises(IntegrityError, match=r"1 commit marker\(s\) missing \(block_000001\.json\).*--overwrite"):
        make_synthetic_store(synth, **TINY)
    with pytest.raises(IntegrityError, match="commit marker"):
        ActivationStore.open(str(synth)).info()
    other = synth.parent / "rows"
    make_synthetic_store(other, **TINY)
    import polars as pl

    pl.read_parquet(other / EXAMPLES_FILE).head(10).write_parquet(other / EXAMPLES_FILE)
    with pytest.raises(IntegrityError, match=r"examples\.parquet: 10 rows, the manifest says 300"):
        ActivationStore.open(str(other)).check_reusable()


# ---- item 8 on S3: conditional writes against a real S3 server (moto) on loopback ----------------------------------

S3_RACER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    import fsspec.asyn, s3fs
    from spin_cache.store import lock

    url, endpoint, barrier, me, condition = sys.argv[1:6]
    barrier = Path(barrier)
    real_call, waited = s3fs.S3FileSystem._call_s3, []

    async def call_s3(self, method, *args, **kwargs):
        # Both racers stop before their conditional PUT of the lock until both are there: the PUTs race.
        if method == "put_object" and condition in kwargs and not waited:
            waited.append(1)
            (barrier / f"ready-{me}").touch()
            deadline = time.time() + 60
            while not all((barrier / f"ready-{x}").exists() for x in ("a", "b")) and time.time() < deadline:
                await asyncio.sleep(0.01)
        return await real_call(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = call_s3
    s3fs.S3FileSystem.call_s3 = fsspec.asyn.sync_wrapper(call_s3)  # the class's sync twin wraps the original
    try:
        with lock.StoreLock(url, {"endpoint_url": endpoint, "skip_instance_cache": True}):
            (barrier / f"result-{me}").write_text("won")
            deadline = time.time() + 60
            while not (barrier / "release").exists() and time.time() < deadline:
                time.sleep(0.01)
    except lock.StoreLockedError as exc:
        (barrier / f"result-{me}").write_text("locked: " + str(exc))
    """
)


@pytest.fixture(scope="module")
def s3_server():
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="locks")
        yield {"endpoint": endpoint, "client": client}
    server.stop()


def s3_lock_body(s3_server, key: str) -> dict | None:
    try:
        return json.loads(s3_server["client"].get_object(Bucket="locks", Key=key)["Body"].read())
    except s3_server["client"].exceptions.NoSuchKey:
        return None


@pytest.mark.parametrize("stale", [False, True], ids=["fresh", "stale"])
def test_two_processes_racing_for_an_s3_lock_exactly_one_wins(s3_server, tmp_path, stale):
    url, key = f"s3://locks/{tmp_path.name}/store", f"{tmp_path.name}/store.lock"
    if stale:
        holder = {"host": socket.gethostname(), "pid": dead_pid(), "started": "x"}
        s3_server["client"].put_object(Bucket="locks", Key=key, Body=json.dumps(holder).encode())
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO)}
    condition = "IfMatch" if stale else "IfNoneMatch"
    racers = {
        me: subprocess.Popen(
            [sys.executable, "-c", S3_RACER, url, s3_server["endpoint"], str(barrier), me, condition], env=env
        )
        for me in ("a", "b")
    }
    try:
        results = {}
        for me, proc in racers.items():
            while not (barrier / f"result-{me}").exists():
                assert proc.poll() is None, f"racer {me} exited with {proc.returncode} before reporting"
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.05)
            results[me] = (barrier / f"result-{me}").read_text()
        assert all((barrier / f"ready-{me}").exists() for me in racers)  # both really raced
        won = [me for me, text in results.items() if text == "won"]
        assert len(won) == 1, results
        loser = "b" if won == ["a"] else "a"
        assert results[loser].startswith("locked: ") and f"pid {racers[won[0]].pid}" in results[loser]
        assert s3_lock_body(s3_server, key)["pid"] == racers[won[0]].pid
    finally:
        (barrier / "release").touch()
        for proc in racers.values():
            proc.wait(timeout=60)
    assert all(proc.returncode == 0 for proc in racers.values())
    assert s3_lock_body(s3_server, key) is None  # released


def test_an_s3_lock_is_refused_while_held_and_a_malformed_one_is_named(s3_server, tmp_path):
    opts = {"endpoint_url": s3_server["endpoint"]}
    url, key = f"s3://locks/{tmp_path.name}/store", f"{tmp_path.name}/store.lock"
    with StoreLock(url, opts), pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        StoreLock(url, opts).acquire()
    assert s3_lock_body(s3_server, key) is None
    s3_server["client"].put_object(Bucket="locks", Key=key, Body=b'{"pid": "x", "host": "h"}')
    with pytest.raises(StoreLockedError, match=f"s3://locks/{key}, which names no valid pid"):
        StoreLock(url, opts).acquire()
