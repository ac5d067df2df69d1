"""Issue 18, the loop half: where probe/sweep/report may write, what a local Dask cluster listens on, damaged stores
and runs as one IntegrityError line, memory budgets too small to work, numeric settings checked at the library."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spin_cache.cli import main
from spin_cache.errors import InputError, IntegrityError, SpinCacheError
from spin_cache.loop.parallel import check_memory_budget, parse_bytes, run_tasks
from spin_cache.loop.probe import ProbeRun, ProbeSettings, run_probes
from spin_cache.loop.sweep import SweepSettings, run_sweep
from spin_cache.report import write_report
from spin_cache.store.access import array_name
from spin_cache.store.ordered import ORDERED_DIR
from spin_cache.synth import make_synthetic_store

TINY = {"n_rows": 300, "n_layers": 2, "width": 32, "informative": {2: 3}, "block_rows": 128}
FAST_PROBE = ProbeSettings(c_grid=(0.1, 1.0))
FAST_SWEEP = SweepSettings(values=(0.5, 0.9), c_grid=(0.1, 1.0))
CLI = Path(sys.executable).parent / "spin-cache"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny synthetic store, its probe run and its sweep (made once; tests copy what they damage)."""
    root = tmp_path_factory.mktemp("faults_loop")
    store = root / "store"
    make_synthetic_store(store, **TINY)
    run_probes(str(store), root / "run", FAST_PROBE, scheduler="sync", progress=False)
    run_sweep(str(store), root / "run", root / "sweep", FAST_SWEEP, scheduler="sync", progress=False)
    return {"root": root, "store": store, "run": root / "run", "sweep": root / "sweep"}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _flip(path: Path, offset: int = 20) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    data[offset + 1] ^= 0xFF
    path.write_bytes(bytes(data))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, env=env, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("spin-cache: error: "), proc.stderr
    return lines[0]


# ---- item 1: spin-cache writes only into what it wrote ------------------------------------------------------


def _foreign_dir(path: Path) -> Path:
    path.mkdir()
    (path / "thesis.tex").write_text("precious")
    return path


def test_probe_sweep_report_refuse_a_foreign_directory_and_leave_it_untouched(tiny, tmp_path):
    store, run = str(tiny["store"]), tiny["run"]
    for name, call in (
        ("probe", lambda out: run_probes(store, out, FAST_PROBE, scheduler="sync", progress=False)),
        ("sweep", lambda out: run_sweep(store, run, out, FAST_SWEEP, scheduler="sync", progress=False)),
        ("report", lambda out: write_report(tiny["sweep"], out)),
    ):
        out = _foreign_dir(tmp_path / name)
        with pytest.raises(InputError, match=re.escape(str(out)) + ".*not a spin-cache"):
            call(out)
        assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"], name
        assert (out / "thesis.tex").read_text() == "precious"
        afile = tmp_path / f"{name}.txt"
        afile.write_text("mine")
        with pytest.raises(InputError, match="is a file"):
            call(afile)
        assert afile.read_text() == "mine"


def test_cli_refuses_a_foreign_out_with_exit_2_and_one_line(tiny, tmp_path, capsys):
    out = _foreign_dir(tmp_path / "foreign")
    commands = (
        ["probe", str(tiny["store"]), "--out", str(out), "--C", "0.1", "--scheduler", "sync", "--quiet"],
        ["sweep", str(tiny["store"]), "--probes", str(tiny["run"]), "--out", str(out), "--quiet"],
        ["report", str(tiny["sweep"]), "--out", str(out)],
    )
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0] and str(out) in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_reruns_into_their_own_outputs_work_even_after_a_crash(tiny, tmp_path, monkeypatch):
    import spin_cache.loop.sweep as sweep_mod

    run = _copy(tiny["run"], tmp_path / "run")
    (run / "command.txt").write_text("spin-cache probe ...\n")  # what the command line adds beside its outputs
    assert run_probes(str(tiny["store"]), run, FAST_PROBE, scheduler="sync", progress=False).probes.height == 5

    out = tmp_path / "sweep"

    def crash(*args, **kwargs):
        raise RuntimeError("killed midway")

    monkeypatch.setattr(sweep_mod, "_export_head", crash)
    with pytest.raises(RuntimeError):
        run_sweep(str(tiny["store"]), run, out, FAST_SWEEP, scheduler="sync", progress=False)
    monkeypatch.undo()
    marker = json.loads((out / "sweep.json").read_text())  # written before anything else
    assert marker["status"] == "incomplete" and not (out / "summary.json").exists()
    result = run_sweep(str(tiny["store"]), run, out, FAST_SWEEP, scheduler="sync", progress=False)
    assert json.loads((out / "sweep.json").read_text())["status"] == "complete"
    assert (out / "summary.json").exists()
    assert result.sweep.height == 2 * (3 + 2)  # 2 etas x (hidden K 1..3 + ffn K 1..2)
    run_sweep(str(tiny["store"]), run, out, FAST_SWEEP, scheduler="sync", progress=False)  # and again

    report = tmp_path / "report"
    report.mkdir()  # an empty directory is fine
    write_report(out, report)
    (report / "probes.png").unlink()  # a half-written earlier report
    assert write_report(out, report) == report / "report.html"
    assert "being written" not in (report / "report.html").read_text()


def test_a_probe_run_that_stopped_midway_is_resumed(tiny, tmp_path, monkeypatch):
    import spin_cache.loop.probe as probe_mod

    out = tmp_path / "run"
    real = probe_mod._write_part
    written = []

    def stop_after_one(parts, result):
        if written:
            raise KeyboardInterrupt
        written.append(result["layer"])
        real(parts, result)

    monkeypatch.setattr(probe_mod, "_write_part", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_probes(str(tiny["store"]), out, FAST_PROBE, scheduler="sync", progress=False)
    monkeypatch.undo()
    assert json.loads((out / "run.json").read_text())["status"] == "incomplete"
    assert run_probes(str(tiny["store"]), out, FAST_PROBE, scheduler="sync", progress=False).probes.height == 5


# ---- item 6: a local cluster listens on loopback only, no dashboard unless asked -----------------------------


def _listening(pid: int) -> list[tuple[int, str, int]]:
    import psutil

    me = psutil.Process(pid)
    found = []
    for proc in [me, *me.children(recursive=True)]:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        found += [(proc.pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_local_cluster_listens_on_loopback_only_and_serves_no_dashboard(scheduler):
    seen: list[tuple[int, str, int]] = []
    for _, value in run_tasks(abs, [(-1,), (-2,), (-3,)], scheduler=scheduler, workers=2, progress=False):
        seen += _listening(os.getpid())  # the cluster is open while results come in
        assert value in (1, 2, 3)
    assert seen or scheduler == "threads"
    outside = [s for s in seen if s[1] not in ("127.0.0.1", "::1")]
    assert not outside, f"listening beyond loopback: {outside}"
    assert not [s for s in seen if s[2] == 8787], "the dashboard's port is taken without being asked for"


def test_dashboard_only_when_asked_and_on_the_address_given():
    from dask.distributed import Client

    from spin_cache.loop.parallel import local_cluster

    with local_cluster("threads", 1, "127.0.0.1:0") as cluster, Client(cluster) as client:
        port = client.scheduler_info()["services"].get("dashboard")
        ports = {p for _, ip, p in _listening(os.getpid()) if ip == "127.0.0.1"}
        assert port in ports
    with local_cluster("threads", 1) as cluster:
        assert cluster.scheduler.http_server.address == "127.0.0.1"


# ---- item 9: damage is IntegrityError (exit 4), one line naming the array and chunk --------------------------


def test_damaged_store_chunk_is_one_integrity_line_from_probe_and_sweep(tiny, tmp_path):
    """Needs store.py's part of the fix (ActivationStore.read raising IntegrityError for a damaged chunk)."""
    store = _copy(tiny["store"], tmp_path / "store")
    name = array_name("hidden", "mean", 1)
    _flip(store / name / "c" / "1" / "0")
    for scheduler in ("sync", "threads"):
        with pytest.raises(IntegrityError, match=re.escape(name)):
            run_probes(str(store), tmp_path / f"run-{scheduler}", FAST_PROBE, scheduler=scheduler, workers=2,
                       progress=False)  # fmt: skip
    proc = _cli("probe", str(store), "--out", str(tmp_path / "run-cli"), "--C", "0.1", "--quiet")
    line = _one_error_line(proc)
    assert proc.returncode == 4 and name in line and "rerun" not in line, proc.stderr
    # sweep reads the store too: for Base (the last hidden layer in full) and the columns not in the ordered copy
    _flip(store / array_name("hidden", "mean", 2) / "c" / "0" / "0")
    argv = ["sweep", str(store), "--probes", str(tiny["run"]), "--quiet"]
    proc = _cli(*argv, "--out", str(tmp_path / "sweep"), "--select", "argmax")
    line = _one_error_line(proc)
    assert proc.returncode == 4 and array_name("hidden", "mean", 2) in line, proc.stderr
    # cv's folds probe every layer from the store first: the first damaged chunk they meet is named
    proc = _cli(*argv, "--out", str(tmp_path / "sweep-cv"))
    line = _one_error_line(proc)
    assert proc.returncode == 4 and name in line and "\n" not in line.strip(), proc.stderr


def _damaged_ordered_run(tiny, tmp_path) -> tuple[Path, str]:
    run = _copy(tiny["run"], tmp_path / "run")
    name = array_name("hidden", "mean", 1)
    _flip(run / ORDERED_DIR / name / "c" / "1" / "0", offset=8)
    return run, name


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_damaged_ordered_copy_is_an_integrity_error_from_every_scheduler(tiny, tmp_path, scheduler):
    run, name = _damaged_ordered_run(tiny, tmp_path)
    with pytest.raises(IntegrityError) as info:
        run_sweep(str(tiny["store"]), run, tmp_path / "sweep", FAST_SWEEP, scheduler=scheduler, workers=2,
                  progress=False)  # fmt: skip
    assert type(info.value) is IntegrityError  # the class survives the trip back from a worker
    message = str(info.value)
    assert f"{ORDERED_DIR}/{name}" in message and "chunk c/1/0" in message and "\n" not in message


def test_cli_sweep_on_a_damaged_ordered_copy_exits_4_with_one_line(tiny, tmp_path):
    run, name = _damaged_ordered_run(tiny, tmp_path)
    proc = _cli("sweep", str(tiny["store"]), "--probes", str(run), "--out", str(tmp_path / "sweep"), "--quiet")
    line = _one_error_line(proc)
    assert proc.returncode == 4 and f"{ORDERED_DIR}/{name}" in line and "c/1/0" in line, proc.stderr


@pytest.mark.parametrize(
    "damage",
    ["run.json", "probes.parquet", "neuron_scores.parquet", "missing neuron_scores.parquet", "ordered zarr.json"],
)
def test_damaged_probe_run_side_files_are_integrity_errors(tiny, tmp_path, damage):
    run = _copy(tiny["run"], tmp_path / "run")
    if damage == "run.json":
        (run / "run.json").write_text((run / "run.json").read_text()[:40])
    elif damage.startswith("missing"):
        (run / damage.split()[1]).unlink()
    elif damage == "ordered zarr.json":
        (run / ORDERED_DIR / "zarr.json").write_text("{not json")
    else:  # cut short, as by a full disk or a copy that stopped
        (run / damage).write_bytes((run / damage).read_bytes()[:-40])
    where = "zarr.json" if damage.startswith("ordered") else damage.split()[-1]
    with pytest.raises(IntegrityError, match=re.escape(where)):
        run_sweep(str(tiny["store"]), run, tmp_path / "sweep", FAST_SWEEP, scheduler="sync", progress=False)
    proc = _cli("sweep", str(tiny["store"]), "--probes", str(run), "--out", str(tmp_path / "sweep2"), "--quiet")
    line = _one_error_line(proc)
    assert proc.returncode == 4 and where in line, proc.stderr


def test_damaged_probe_part_is_named_on_rerun(tiny, tmp_path):
    run = _copy(tiny["run"], tmp_path / "run")
    part = sorted((run / "parts").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:-40])
    with pytest.raises(IntegrityError, match=re.escape(part.name) + ".*delete it"):
        run_probes(str(tiny["store"]), run, FAST_PROBE, scheduler="sync", progress=False)


def _fails(kind: str, log: str) -> None:
    with open(log, "a") as f:  # tasks are serialised even for in-process workers: count calls in a file
        f.write(kind + "\n")
    if kind == "integrity":
        raise IntegrityError("x.zarr/hidden/mean/layer_01: chunk c/0/0 is damaged")
    raise ValueError("line one\nline two")


def test_other_task_failures_are_one_line_and_spin_cache_errors_are_not_retried(tmp_path):
    for scheduler in ("sync", "threads"):
        log = tmp_path / f"{scheduler}.log"
        with pytest.raises(IntegrityError, match="chunk c/0/0"):
            list(run_tasks(_fails, [("integrity", str(log))], scheduler=scheduler, workers=1, progress=False))
        assert log.read_text() == "integrity\n"  # a damaged chunk stays damaged: no retry
        with pytest.raises(SpinCacheError) as info:
            list(run_tasks(_fails, [("other", str(log))], scheduler=scheduler, workers=1, progress=False))
        assert "\n" not in str(info.value) and "ValueError: line one line two" in str(info.value)


# ---- item 13: a memory budget below one row block is refused up front ----------------------------------------


def test_a_memory_budget_below_one_row_block_is_refused_up_front(tiny, tmp_path):
    import time

    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"--memory-budget .*at least [\d.]+ KiB") as info:
        run_probes(str(tiny["store"]), tmp_path / "run", FAST_PROBE, scheduler="threads", workers=2,
                   memory_budget=1024, progress=False)  # fmt: skip
    with pytest.raises(InputError, match=r"--memory-budget .*at least"):
        run_sweep(str(tiny["store"]), tiny["run"], tmp_path / "sweep", FAST_SWEEP, scheduler="sync",
                  memory_budget=1024, progress=False)  # fmt: skip
    assert time.perf_counter() - t0 < 20
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()  # refused before writing
    # the minimum it states is enough: 2 tasks x one 128-row block of 32 float32 columns x 3 copies
    stated = re.search(r"at least ([\d.]+ \w+)", str(info.value)).group(1)
    need = 2 * 3 * 4 * 128 * 32
    assert parse_bytes(stated.replace(" ", "")) >= need
    check_memory_budget(parse_bytes(stated.replace(" ", "")), need // 2, "threads", 2)
    proc = _cli("probe", str(tiny["store"]), "--out", str(tmp_path / "r"), "--memory-budget", "1K", "--quiet")
    line = _one_error_line(proc)
    assert proc.returncode == 2 and "--memory-budget" in line and "at least" in line


# ---- item 2: numeric settings checked at the library; summary.json is strict JSON ---------------------------


@pytest.mark.parametrize(
    ("settings", "word"),
    [
        (lambda: ProbeSettings(c_grid=(0.1, math.nan)), "c_grid"),
        (lambda: ProbeSettings(c_grid=(0.1, -1.0)), "c_grid"),
        (lambda: ProbeSettings(c_grid=()), "c_grid"),
        (lambda: ProbeSettings(max_iter=0), "max_iter"),
        (lambda: SweepSettings(values=(0.5, 1.5)), "--eta"),
        (lambda: SweepSettings(values=(0.0,)), "--eta"),
        (lambda: SweepSettings(rule="top-k", values=(0.5,)), "--top-k"),
        (lambda: SweepSettings(rule="top-percent", values=(150.0,)), "--top-percent"),
        (lambda: SweepSettings(c_grid=(math.inf,)), "c_grid"),
        (lambda: SweepSettings(seed=-1), "--seed"),
    ],
)
def test_settings_out_of_range_are_input_errors(settings, word):
    with pytest.raises(InputError, match=re.escape(word)):
        settings().check()


def test_workers_and_budget_checked_at_the_library(tiny, tmp_path):
    for kwargs, word in (({"workers": 0}, "--workers"), ({"memory_budget": -5}, "--memory-budget")):
        with pytest.raises(InputError, match=word):
            run_probes(str(tiny["store"]), tmp_path / "r", FAST_PROBE, scheduler="threads", progress=False, **kwargs)
        with pytest.raises(InputError, match=word):
            run_sweep(str(tiny["store"]), tiny["run"], tmp_path / "s", FAST_SWEEP, progress=False, **kwargs)


def test_summary_json_holds_no_nan_when_there_is_no_test_split(tmp_path):
    store = make_synthetic_store(tmp_path / "store", split_shares=(0.7, 0.3, 0.0), **TINY)
    run_probes(store.url, tmp_path / "run", FAST_PROBE, scheduler="sync", progress=False)
    result = run_sweep(store.url, tmp_path / "run", tmp_path / "sweep", FAST_SWEEP, scheduler="sync", progress=False)
    assert np.isnan(result.table["spin"]["test"])

    def refuse(token: str) -> None:
        raise AssertionError(f"summary.json holds {token}")

    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text(), parse_constant=refuse)
    assert summary["table"]["spin"]["test"] is None and summary["table"]["spin"]["dev"] is not None
    assert ProbeRun(tmp_path / "run").probes.height == 5
