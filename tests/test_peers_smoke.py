"""Smoke test of benchmarks/peers.py: a tiny slice, cheap stages, so the harness does not rot."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "benchmarks" / "peers.py"


def test_peers_harness_writes_reports(tmp_path):
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("peers", HARNESS)
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)

    tools = ["paper-pickle"]
    try:
        import datasets  # noqa: F401

        tools.append("hf-datasets")
    except ImportError:
        pass
    cmd = [
        sys.executable,
        str(HARNESS),
        "--limit", "8",
        "--repeats", "1",
        "--scale-repeats", "0",
        "--kinds", "hidden",
        "--poolings", "mean",
        "--stages", "extract,probe",
        "--tools", ",".join(tools),
        "--out-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "peers.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == peers.COLUMNS
    assert {(r["tool"], r["stage"]) for r in rows} == {(t, s) for t in tools for s in ("extract", "probe")}
    assert all(r["status"] == "ok" for r in rows), rows
    assert all(float(r["wall_s"]) > 0 and float(r["peak_rss_mb"]) > 0 for r in rows)
    md = (tmp_path / "peers.md").read_text()
    assert "## Extraction" in md and "## Probing every layer" in md
    assert "| tool | status | wall_s | peak_rss_mb | bytes_on_disk | resumable |" in md
