"""Probes and sweeps through a real dask.distributed scheduler and two workers on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spin_cache.cli import main
from spin_cache.loop.probe import ProbeRun, run_probes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_workers(address: str, n: int, timeout: float = 60) -> None:
    from dask.distributed import Client

    with Client(address, timeout="20s") as client:
        client.wait_for_workers(n, timeout=timeout)


@pytest.fixture
def cluster(tmp_path):
    """`dask scheduler` and two single-threaded `dask worker` processes on 127.0.0.1, stopped afterwards."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    bin_dir = Path(sys.executable).parent
    env = os.environ | {"HF_HUB_OFFLINE": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    common = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp_path}
    scheduler = subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
        **common,
    )
    workers = [
        subprocess.Popen(
            [
                bin_dir / "dask",
                "worker",
                address,
                "--nthreads",
                "1",
                "--no-nanny",
                "--host",
                "127.0.0.1",
                "--no-dashboard",
                "--name",
                f"w{i}",
            ],
            **common,
        )
        for i in range(2)
    ]
    try:
        _wait_for_workers(address, 2)
        yield address, workers
    finally:
        for proc in [*workers, scheduler]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*workers, scheduler]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_probe_and_sweep_on_a_real_cluster_match_local_results(cluster, small_store, tmp_path, capsys):
    address, _ = cluster
    out = tmp_path / "probes"
    grid = ["--C", "0.1,1"]
    assert main(["probe", small_store, "--out", str(out), *grid, "--scheduler", address, "--quiet"]) == 0
    local = run_probes(small_store, tmp_path / "local", ProbeRun(out).settings, scheduler="sync", progress=False)
    remote = ProbeRun(out)
    assert remote.scores.equals(local.scores)
    assert remote.probes.drop("fit_seconds").equals(local.probes.drop("fit_seconds"))
    sweep = tmp_path / "sweep"
    code = main(["sweep", small_store, "--probes", str(out), "--out", str(sweep), "--eta", "0.1,0.5", *grid,
                 "--scheduler", address, "--json", "--quiet"])  # fmt: skip
    assert code == 0
    assert (sweep / "head" / "head.safetensors").exists()


def test_scheduler_from_environment(cluster, small_store, tmp_path, monkeypatch):
    address, _ = cluster
    monkeypatch.setenv("SPIN_CACHE_SCHEDULER", address)
    run = run_probes(small_store, tmp_path / "p", kinds=["hidden"], poolings=["mean"], progress=False)
    assert run.probes.height == 7


def test_a_worker_killed_mid_job_does_not_lose_the_job(cluster, small_store, tmp_path):
    address, workers = cluster
    out = tmp_path / "probes"
    code = "import sys; from spin_cache.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "probe", small_store, "--out", str(out), "--scheduler", address, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    parts = out / "parts"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is not None:  # nothing left to lose: the scenario did not happen, which is not a failure
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        pytest.skip("the probe job finished before a worker could be killed (a fast machine); results checked")
    os.kill(workers[0].pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    # Dask reruns the dead worker's tasks on the other one; every probe lands.
    assert proc.returncode == 0, err
    run = ProbeRun(out)
    assert run.probes.height == 39


def test_unreachable_scheduler_is_one_line(small_store, tmp_path, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"
    code = main(["probe", small_store, "--out", str(tmp_path / "p"), "--scheduler", address, "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "cannot connect" in err and address in err


def test_bad_scheduler_name(small_store, tmp_path, capsys):
    assert main(["probe", small_store, "--out", str(tmp_path / "p"), "--scheduler", "fast", "--quiet"]) == 2
    assert "--scheduler fast" in capsys.readouterr().err
