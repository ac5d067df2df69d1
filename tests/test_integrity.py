"""Damage is found and named; reading a store never writes to it; nothing is unpickled; crafted heads and manifests
cannot reach outside their directory."""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import zarr

from spin_cache.cli import main
from spin_cache.errors import IntegrityError, SpinCacheError
from spin_cache.store.activation_store import ActivationStore
from spin_cache.store.layout import EXAMPLES_FILE

PACKAGE = Path(__file__).resolve().parent.parent / "spin_cache"
ARRAY = "hidden/mean/layer_03"


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, tiny_sst2) -> Path:
    """One small store (hidden, mean, blocks of 32 rows over 80 rows: three blocks); tests damage copies of it."""
    from spin_cache.extract.run import run_extraction

    out = tmp_path_factory.mktemp("integrity") / "base"
    report = run_extraction(
        **tiny_sst2, out=str(out), kinds=["hidden"], poolings=["mean"], block_rows=32, progress=False
    )
    assert report.store.is_complete
    return out


@pytest.fixture
def store(base_store, tmp_path) -> Path:
    path = tmp_path / "store"
    shutil.copytree(base_store, path)
    return path


def verify_lines(path: Path, capsys) -> tuple[int, list[str]]:
    rc = main(["verify", str(path), "--quiet"])
    out = capsys.readouterr().out
    return rc, [line for line in out.splitlines() if line.startswith("damaged:")]


def edit_manifest(path: Path, edit) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    edit(meta["attributes"]["spin_cache"])
    (path / "zarr.json").write_text(json.dumps(meta))


# ---- verify names each kind of damage -------------------------------------------------------------------------


def test_clean_store_verifies(store, capsys):
    assert verify_lines(store, capsys) == (0, [])


def test_flipped_byte_in_a_chunk_is_named(store, capsys):
    chunk = store / ARRAY / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x01
    chunk.write_bytes(bytes(data))
    rc, lines = verify_lines(store, capsys)
    assert rc == 1
    assert lines and all(ARRAY in line and "c/1/0" in line for line in lines), lines


def test_missing_chunk_is_named(store, capsys):
    (store / ARRAY / "c" / "2" / "0").unlink()
    rc, lines = verify_lines(store, capsys)
    assert rc == 1
    assert len(lines) == 1 and ARRAY in lines[0] and "c/2/0" in lines[0] and "missing" in lines[0], lines


def test_truncated_examples_table_is_named(store, capsys):
    path = store / EXAMPLES_FILE
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    rc, lines = verify_lines(store, capsys)
    assert rc == 1
    assert len(lines) == 1 and "examples.parquet" in lines[0], lines


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: m["model"].update(weights_sha256="0" * 64), id="weights-hash"),
        pytest.param(lambda m: m["model"].update(name="someone-elses-model"), id="model-name"),
        pytest.param(lambda m: m["dataset"].update(label_names=["pos", "neg"]), id="label-names"),
    ],
)
def test_edited_manifest_is_named(store, capsys, edit):
    edit_manifest(store, edit)
    rc, lines = verify_lines(store, capsys)
    assert rc == 1
    assert len(lines) == 1 and "zarr.json" in lines[0] and "manifest" in lines[0], lines


# ---- reading never writes -------------------------------------------------------------------------------------


def snapshot(path: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.relative_to(path).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size, p.stat().st_mode)
        for p in sorted(path.rglob("*"))
    }


def test_reading_commands_never_write_into_the_store(store, tmp_path, capsys):
    for p in store.rglob("*"):
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = snapshot(store)
    grid = ["--C", "0.1,1", "--scheduler", "sync", "--quiet"]
    try:
        assert main(["info", str(store)]) == 0
        assert main(["info", str(store), "--json"]) == 0
        assert main(["verify", str(store), "--quiet"]) == 0
        assert main(["probe", str(store), "--out", str(tmp_path / "p"), *grid]) == 0
        assert (
            main(
                [
                    "sweep",
                    str(store),
                    "--probes",
                    str(tmp_path / "p"),
                    "--out",
                    str(tmp_path / "s"),
                    "--eta",
                    "0.1,0.5",
                    *grid,
                ]
            )
            == 0
        )
        assert main(["ls", str(store.parent), "--json"]) == 0
        assert snapshot(store) == before
        if os.geteuid() != 0:  # as root, chmod does not stop writes; the snapshot above is the check then
            with pytest.raises(PermissionError):
                (store / "zarr.json").write_text("{}")
    finally:
        for p in store.rglob("*"):
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    capsys.readouterr()


def test_read_only_open_refuses_writes(store):
    before = snapshot(store)
    opened = ActivationStore.open(str(store), mode="r")
    arr = opened.array("hidden", "mean", 3)
    with pytest.raises(Exception, match=r"read[ -_]?only"):
        arr[0:1] = np.zeros((1, arr.shape[1]), dtype=arr.dtype)
    with pytest.raises(Exception, match=r"read[ -_]?only"):
        opened._group.attrs["spin_cache"] = {}
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["spin_cache"]["fingerprint"] == opened.fingerprint
    with pytest.raises(Exception, match=r"read[ -_]?only"):
        group[ARRAY][0:1] = 0
    with pytest.raises(Exception, match=r"read[ -_]?only"):
        group.create_array("evil", shape=(1,), dtype="f4")
    opened.verify()
    opened.info()
    opened.read("hidden", "mean", 3, columns=[0, 5], split="dev")
    assert snapshot(store) == before


# ---- no pickle ---------------------------------------------------------------------------------------------------


def test_no_pickle_in_the_package():
    """Nothing in spin_cache imports pickle (or its cousins), calls torch.load without weights_only=True, or calls
    np.load with allow_pickle=True: every file it reads is JSON, Parquet, Zarr or safetensors."""
    banned_modules = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in banned_modules]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in banned_modules:
                problems.append(f"{where} from {node.module} import")
            elif isinstance(node, ast.Attribute) and node.attr in ("read_pickle", "to_pickle", "loads_pickle"):
                problems.append(f"{where} .{node.attr}")
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                kwargs = {k.arg: k.value for k in node.keywords}
                if base == "torch" and node.func.attr == "load":
                    wo = kwargs.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        problems.append(f"{where} torch.load without weights_only=True")
                if base in ("np", "numpy") and node.func.attr == "load":
                    ap = kwargs.get("allow_pickle")
                    if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                        problems.append(f"{where} np.load(allow_pickle=...)")
    assert problems == []


# ---- crafted heads and manifests ------------------------------------------------------------------------------------


@pytest.fixture
def head_dir(tmp_path) -> Path:
    from spin_cache.fit.estimator import SpinClassifier
    from spin_cache.fit.head import Head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    clf = SpinClassifier(C=1.0).fit(x, y)
    folder = tmp_path / "head"
    info = {"kind": "hidden", "pooling": "mean", "label_names": ["neg", "pos"], "max_length": 32, "model": {}}
    Head(classifier=clf, selection={1: np.array([0, 1]), 2: np.array([2, 3])}, info=info).save(folder)
    return folder


def edit_head(folder: Path, edit) -> None:
    meta = json.loads((folder / "head.json").read_text())
    edit(meta)
    (folder / "head.json").write_text(json.dumps(meta))


def test_good_head_loads(head_dir):
    from spin_cache.fit.head import Head

    assert Head.load(head_dir).layers == [1, 2]


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda m: m.update(layers=["../../x"]), id="layer-traversal"),
        pytest.param(lambda m: m.update(layers=[1, "../../../etc/passwd"]), id="layer-traversal-2"),
        pytest.param(lambda m: m.update(layers=[-1]), id="negative-layer"),
        pytest.param(lambda m: m.update(layers=[7]), id="layer-without-arrays"),
        pytest.param(lambda m: m.update(kind="../evil"), id="kind-traversal"),
        pytest.param(lambda m: m.update(pooling="../../evil"), id="pooling-traversal"),
        pytest.param(lambda m: m.pop("classifier"), id="no-classifier"),
    ],
)
def test_crafted_head_is_refused_in_one_line(head_dir, edit, capsys):
    from spin_cache.fit.head import Head

    edit_head(head_dir, edit)
    with pytest.raises(SpinCacheError):
        Head.load(head_dir)
    assert main(["predict", str(head_dir), "--text", "a fine film"]) in (2, 4)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(
            lambda m: m["layout"].update(kinds=["../evil"], layers={"../evil": [0]}, widths={"../evil": 4}), id="kind"
        ),
        pytest.param(lambda m: m["layout"].update(poolings=["../../../tmp"]), id="pooling"),
        pytest.param(lambda m: m["layout"].update(poolings=["mean/../../x"]), id="pooling-slash"),
        pytest.param(lambda m: m["layout"]["layers"].update(hidden=[-3]), id="negative-layer"),
        pytest.param(lambda m: m.pop("layout"), id="no-layout"),
    ],
)
def test_crafted_store_manifest_is_refused(store, edit, capsys):
    edit_manifest(store, edit)
    with pytest.raises(IntegrityError):
        ActivationStore.open(str(store))
    for argv in (["info", str(store)], ["verify", str(store), "--quiet"]):
        assert main(argv) == 4
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
