"""Stores on S3: push, info, verify, probe, sweep and ls against a real S3-compatible server (moto) on loopback,
how little a sweep reads, that nothing reading a store writes to it, and one-line errors for remote failures."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from spin_cache.cli import main  # noqa: E402
from spin_cache.errors import InputError, IntegrityError  # noqa: E402
from spin_cache.store.activation_store import ActivationStore  # noqa: E402
from spin_cache.store.layout import EXAMPLES_FILE  # noqa: E402
from spin_cache.store.remote import list_stores, parse_storage_options, push  # noqa: E402

BUCKET = "spin"
URL = f"s3://{BUCKET}/stores/small"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RequestLog(logging.Handler):
    """The server's access log (werkzeug logs one line per request): method and path of every request."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.requests: list[tuple[str, str]] = []
        self.mutex = threading.Lock()  # not `self.lock`: logging.Handler holds its own there while emitting

    def emit(self, record: logging.LogRecord) -> None:
        m = REQUEST.search(record.getMessage())
        if m:
            with self.mutex:
                self.requests.append((m.group(1), m.group(2)))

    def take(self) -> list[tuple[str, str]]:
        with self.mutex:
            out, self.requests = self.requests, []
        return out


@pytest.fixture(scope="module")
def s3(small_store):
    """A moto S3 server on a free loopback port with one bucket holding the pushed `small_store`."""
    from moto.server import ThreadedMotoServer

    log = RequestLog()
    wlog = logging.getLogger("werkzeug")
    old_level, old_propagate = wlog.level, wlog.propagate
    wlog.setLevel(logging.INFO)
    wlog.propagate = False
    wlog.addHandler(log)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(key, raising=False)
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        opts = {"endpoint_url": endpoint}
        pushed = push(small_store, URL, dest_options=opts)
        log.take()
        yield {"endpoint": endpoint, "opts": opts, "log": log, "store": pushed, "source": small_store}
    server.stop()
    wlog.removeHandler(log)
    wlog.setLevel(old_level)
    wlog.propagate = old_propagate


def so(s3: dict) -> list[str]:
    return ["--storage-option", f"endpoint_url={s3['endpoint']}"]


def objects(s3: dict, prefix: str = "stores/") -> dict[str, tuple[str, int]]:
    client = boto3.client("s3", endpoint_url=s3["endpoint"])
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = (obj["ETag"], obj["Size"])
    return out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("spin-cache: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ---- push -------------------------------------------------------------------------------------------------------


def test_push_copies_every_file_and_writes_zarr_json_last(s3):
    from pathlib import Path

    src = Path(s3["source"])
    local = {p.relative_to(src).as_posix(): p.stat().st_size for p in src.rglob("*") if p.is_file()}
    remote = {k.removeprefix("stores/small/"): size for k, (_, size) in objects(s3, "stores/small/").items()}
    assert remote == local
    store = ActivationStore.open(URL, storage_options=s3["opts"])
    assert store.is_complete
    assert store.fingerprint == ActivationStore.open(s3["source"]).fingerprint


def test_push_again_is_a_no_op_and_writes_nothing(s3):
    before = objects(s3)
    s3["log"].take()
    again = push(s3["source"], URL, dest_options=s3["opts"])
    assert again.fingerprint == s3["store"].fingerprint
    assert objects(s3) == before
    assert not [r for r in s3["log"].take() if r[0] in ("PUT", "POST", "DELETE")]


def test_push_root_metadata_is_the_last_write(s3, tmp_path):
    main(["push", s3["source"], f"s3://{BUCKET}/order/small", *so(s3), "--quiet"])
    puts = [path for method, path in s3["log"].take() if method == "PUT"]
    assert puts[-1].split("?")[0] == f"/{BUCKET}/order/small/zarr.json"
    assert sum(p.split("?")[0] == f"/{BUCKET}/order/small/zarr.json" for p in puts) == 1


def test_push_refuses_an_incomplete_store(s3, small_store, tmp_path):
    import shutil

    half = tmp_path / "half"
    shutil.copytree(small_store, half)
    meta = json.loads((half / "zarr.json").read_text())
    meta["attributes"]["spin_cache"]["status"] = "incomplete"
    (half / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="incomplete"):
        push(str(half), f"s3://{BUCKET}/half", dest_options=s3["opts"])
    assert objects(s3, "half/") == {}


def test_push_refuses_a_store_damaged_in_transit(s3, small_store, tmp_path):
    """A chunk that fails its crc32c on arrival stops the push before zarr.json is written."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(small_store, bad)
    chunk = bad / "hidden" / "mean" / "layer_03" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 3] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"hidden/mean/layer_03 chunk c/1/0"):
        push(str(bad), f"s3://{BUCKET}/bad", dest_options=s3["opts"])
    assert "bad/zarr.json" not in objects(s3, "bad/")
    assert not ActivationStore.exists(f"s3://{BUCKET}/bad", s3["opts"])
    assert list_stores(f"s3://{BUCKET}/bad", s3["opts"]) == []


def test_push_a_format_1_store_and_read_a_pushed_store_with_plain_zarr(s3, tmp_path):
    """A store made before format 2 (side files at the top level) is pushed as it is and reads back; plain zarr
    lists a pushed format-2 store on S3 without a warning."""
    import shutil
    import warnings

    import zarr
    from zarr.storage import FsspecStore

    from .test_store_format import FORMAT1

    old = shutil.copytree(FORMAT1, tmp_path / "old")
    pushed = push(str(old), f"s3://{BUCKET}/format1", dest_options=s3["opts"])
    assert pushed.format_version == 1 and pushed.verify() == []
    local = {p.relative_to(old).as_posix() for p in old.rglob("*") if p.is_file()}
    assert {k.removeprefix("format1/") for k in objects(s3, "format1/")} == local
    assert s3["store"].format_version == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(FsspecStore.from_url(URL, storage_options=s3["opts"], read_only=True), mode="r")
        names = [name for name, _ in group.members(max_depth=None)]
        group.tree()
    assert "spin_cache" in names and "hidden/mean/layer_00" in names


def test_push_to_a_local_directory(small_store, tmp_path):
    dest = tmp_path / "copy"
    store = push(small_store, str(dest))
    assert store.is_complete and store.verify() == []


# ---- reading from S3 ----------------------------------------------------------------------------------------------


def test_info_and_verify_against_s3(s3, capsys):
    assert main(["info", URL, "--json", *so(s3)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["status"] == "complete" and info["url"] == URL
    assert info["fingerprint"] == s3["store"].fingerprint
    assert main(["verify", URL, "--quiet", *so(s3)]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {URL}")


def test_endpoint_from_environment(s3, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])
    assert main(["info", URL]) == 0
    assert "complete" in capsys.readouterr().out


def test_nested_storage_option(s3, capsys):
    assert parse_storage_options(["client_kwargs.endpoint_url=http://x:1", "anon=false", "n=3"]) == {
        "client_kwargs": {"endpoint_url": "http://x:1"},
        "anon": False,
        "n": 3,
    }
    assert main(["info", URL, "--storage-option", f"client_kwargs.endpoint_url={s3['endpoint']}"]) == 0
    assert "complete" in capsys.readouterr().out


def test_probe_and_sweep_against_s3_read_little_and_write_nothing(s3, tmp_path, capsys):
    """Probe and sweep from S3 match the same runs on the local store; the sweep fetches only a small part of the
    arrays it works on; no request that writes reaches the server, and every object keeps its ETag and size."""
    before = objects(s3)
    log = s3["log"]
    log.take()
    scope = ["--kinds", "hidden", "--poolings", "mean", "--C", "0.1,1", "--scheduler", "sync", "--quiet", "--json"]
    assert main(["probe", URL, "--out", str(tmp_path / "probes"), *scope, *so(s3)]) == 0
    remote_probes = json.loads(capsys.readouterr().out)
    probe_requests = log.take()
    assert main(["probe", s3["source"], "--out", str(tmp_path / "probes-local"), *scope]) == 0
    local_probes = json.loads(capsys.readouterr().out)
    assert [r["dev_metric"] for r in remote_probes] == [r["dev_metric"] for r in local_probes]

    sweep = ["--eta", "0.1,0.5", "--select", "argmax", *scope]  # cv's folds read whole layers, as probe does
    argv = ["sweep", URL, "--probes", str(tmp_path / "probes"), "--out", str(tmp_path / "sweep"), *sweep, *so(s3)]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    sweep_requests = log.take()
    local = ["sweep", s3["source"], "--probes", str(tmp_path / "probes-local"), "--out", str(tmp_path / "sl"), *sweep]
    assert main(local) == 0
    assert table["spin"]["dev"] == json.loads(capsys.readouterr().out)["spin"]["dev"]

    # the sweep's reads against S3: far less than the arrays in scope (hidden/mean, every layer), let alone the store
    in_scope = {k: size for k, (_, size) in before.items() if k.startswith("stores/small/hidden/mean/") and "/c/" in k}
    store_bytes = sum(size for _, size in before.values())
    chunk_gets = [p for m, p in sweep_requests if m == "GET" and "/c/" in p]
    assert table["bytes_read"] < sum(in_scope.values()) / 2, (table["bytes_read"], sum(in_scope.values()))
    assert table["bytes_read"] < store_bytes / 20, (table["bytes_read"], store_bytes)
    assert 0 < len(chunk_gets) < len(in_scope), (len(chunk_gets), len(in_scope))
    assert all("/hidden/mean/" in p for p in chunk_gets)

    writes = [r for r in probe_requests + sweep_requests if r[0] in ("PUT", "POST", "DELETE")]
    assert writes == []
    assert objects(s3) == before


def test_info_verify_write_nothing(s3):
    before = objects(s3)
    s3["log"].take()
    assert main(["info", URL, *so(s3)]) == 0
    assert main(["verify", URL, "--quiet", *so(s3)]) == 0
    assert not [r for r in s3["log"].take() if r[0] in ("PUT", "POST", "DELETE")]
    assert objects(s3) == before


def test_ls_lists_the_pushed_store(s3, capsys):
    s3["log"].take()  # requests of earlier tests (a test run alone or in another order must not see them)
    assert main(["ls", f"s3://{BUCKET}", "--json", *so(s3)]) == 0
    entries = json.loads(capsys.readouterr().out)
    mine = [e for e in entries if e["url"] == URL]
    assert len(mine) == 1
    e = mine[0]
    assert e["status"] == "complete" and e["rows"] == 80 and e["model"]
    assert e["fingerprint"] == s3["store"].fingerprint
    assert e["size"] == sum(size for _, size in objects(s3, "stores/small/").values())
    assert main(["ls", f"s3://{BUCKET}/stores", *so(s3)]) == 0
    assert URL in capsys.readouterr().out
    # ls reads zarr.json files and listings, never array chunks
    assert not [p for m, p in s3["log"].take() if m == "GET" and "/c/" in p]


# ---- errors -------------------------------------------------------------------------------------------------------


def test_missing_bucket_is_one_line(s3, capsys):
    for argv in (["info", "s3://no-such-bucket/x"], ["verify", "s3://no-such-bucket/x"], ["ls", "s3://no-such-bucket"]):
        assert main([*argv, *so(s3)]) == 2
        line = one_line_error(capsys)
        assert "bucket" in line and "does not exist" in line


def test_missing_store_in_existing_bucket_is_one_line(s3, capsys):
    assert main(["info", f"s3://{BUCKET}/nothing/here", *so(s3)]) == 2
    assert "no store here" in one_line_error(capsys)


def test_server_down_is_one_line(capsys):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    server.stop()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in CREDENTIALS.items():
            mp.setenv(key, value)
        rc = main(["info", URL, "--storage-option", f"endpoint_url=http://127.0.0.1:{port}"])
    assert rc == 2
    line = one_line_error(capsys)
    assert "cannot reach" in line and f"127.0.0.1:{port}" in line


def test_missing_credentials_is_one_line(s3, capsys, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert main(["info", URL, *so(s3)]) == 2
    line = one_line_error(capsys)
    assert "no credentials" in line and "AWS_ACCESS_KEY_ID" in line


def test_push_errors_are_one_line(s3, capsys):
    assert main(["push", s3["source"], "s3://no-such-bucket/x", *so(s3), "--quiet"]) == 2
    assert "does not exist" in one_line_error(capsys)
    with pytest.raises(InputError, match="KEY=VALUE"):
        parse_storage_options(["endpoint_url"])


def test_extract_straight_to_s3(s3, tiny_sst2, capsys):
    url = f"s3://{BUCKET}/stores/direct"
    args = ["extract", "--train", tiny_sst2["train"], "--dev", tiny_sst2["dev"], "--out", url, *so(s3)]
    args += ["--kinds", "hidden", "--poolings", "mean", "--block-rows", "32", "--quiet", "--json"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "complete"
    keys = objects(s3, "stores/direct")
    assert "stores/direct/zarr.json" in keys and f"stores/direct/{EXAMPLES_FILE}" in keys
    assert not any(k.endswith(".lock") for k in objects(s3, "stores/"))  # the writer's lock is released
    assert main(["verify", url, "--quiet", *so(s3)]) == 0
    assert main([*args]) == 0  # a cache hit
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["cache_hit"] is True
