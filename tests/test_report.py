"""The HTML report: written from a small finished pipeline, self-contained, and every figure drawn when headless
Chromium renders the page (checked on a screenshot against the PNG files)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spin_cache.errors import InputError
from spin_cache.loop.probe import ProbeSettings, run_probes
from spin_cache.loop.sweep import SweepSettings, run_sweep
from spin_cache.report import FIGURES, write_report

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Small, fast settings: the report needs results, not good ones.
PROBE_SETTINGS = ProbeSettings(c_grid=(0.1, 1.0), max_iter=100)
PROBE_POOLINGS = ("mean", "max")


def shared_probes(small_store: str, tmp_path_factory: pytest.TempPathFactory):
    """One probe run of the session's small store (mean and max pooling), shared with test_explain: a second
    call finds every part done and only re-reads them."""
    out = tmp_path_factory.getbasetemp() / "shared-probes-mean-max"
    return run_probes(small_store, out, PROBE_SETTINGS, poolings=PROBE_POOLINGS, scheduler="sync", progress=False)


@pytest.fixture(scope="module")
def pipeline(small_store, tmp_path_factory):
    run = shared_probes(small_store, tmp_path_factory)
    out = tmp_path_factory.mktemp("report-sweep") / "sweep"
    settings = SweepSettings(values=(0.1, 0.5, 0.9), c_grid=(0.1, 1.0), max_iter=100)
    result = run_sweep(small_store, run.path, out, settings, poolings=PROBE_POOLINGS, scheduler="sync", progress=False)
    (run.path / "command.txt").write_text(f"spin-cache probe {small_store} --out {run.path} --pooling mean,max\n")
    (out / "command.txt").write_text(f"spin-cache sweep {small_store} {run.path} --out {out}\n")
    return small_store, run, result


@pytest.fixture(scope="module")
def report(pipeline, tmp_path_factory):
    _, _, result = pipeline
    out = tmp_path_factory.mktemp("report")
    page = write_report(result.path, out, commands=["spin-cache report SWEEP --out OUT"])
    return result, page


def test_report_files_and_self_contained(report, pipeline):
    store, _, result = pipeline
    page = report[1]
    assert page.name == "report.html" and page.is_file()
    text = page.read_text(encoding="utf-8")
    for name in FIGURES:
        png = page.parent / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"id='fig-{name}'" in text
    # nothing is fetched from elsewhere: every image is a data URI, no scripts, stylesheets or fonts
    srcs = re.findall(r"src=['\"]([^'\"]*)", text)
    assert len(srcs) == len(FIGURES) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"<script|<link|@import|url\(|<iframe", text, re.IGNORECASE)
    # the table, the manifest and the command lines that made the run
    table = json.loads((result.path / "summary.json").read_text())["table"]
    assert f"{table['spin']['dev']:.4g}" in text
    assert "Random control" in text and "Base" in text
    assert "&quot;fingerprint&quot;" in text and "num_layers" in text
    assert "spin-cache probe" in text and f"spin-cache sweep {store}" in text
    assert "spin-cache report SWEEP --out OUT" in text


def test_report_refuses_a_bad_sweep_dir(tmp_path):
    with pytest.raises(InputError, match="no-such-dir"):
        write_report(tmp_path / "no-such-dir", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"summary\.json"):
        write_report(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "empty" / "summary.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON") as err:
        write_report(tmp_path / "empty", tmp_path / "out")
    assert "\n" not in str(err.value)
    (tmp_path / "empty" / "summary.json").write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not a spin-cache sweep"):
        write_report(tmp_path / "empty", tmp_path / "out")


def test_report_survives_a_moved_probe_run(pipeline, tmp_path):
    """A sweep whose probe run is gone still gets a report: the probe figure is replaced by a note."""
    _, _, result = pipeline
    moved = tmp_path / "sweep"
    shutil.copytree(result.path, moved)
    summary = json.loads((moved / "summary.json").read_text())
    summary["probes"] = str(tmp_path / "gone")
    (moved / "summary.json").write_text(json.dumps(summary))
    text = write_report(moved, tmp_path / "out").read_text()
    assert "not found" in text and "id='fig-probes'" not in text and "id='fig-neurons'" in text


# ---- rendering in headless Chromium -----------------------------------------------------------------------------


def _chromium() -> Path:
    """The browser comes from set-up (scripts/env.sh runs scripts/install-chromium.sh), never from a test."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash scripts/install-chromium.sh` (scripts/test.sh does it once)")
    return CHROMIUM


def _run_chromium(chromium: Path, profile: Path, url: str, height: int, *extra: str) -> str:
    cmd = [
        str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        "--hide-scrollbars", "--force-device-scale-factor=1", "--virtual-time-budget=5000",
        f"--user-data-dir={profile}", f"--window-size=1400,{height}", *extra, url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Added to a COPY of the page only: writes each image's box and decode state into the DOM for --dump-dom.
_MEASURE = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images].map(i => { const b = i.getBoundingClientRect();
    return {id: i.id, complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
            box: [b.left + scrollX, b.top + scrollY, b.width, b.height],
            border: parseFloat(getComputedStyle(i).borderLeftWidth) || 0}; });
  const p = document.createElement('pre'); p.id = 'measured';
  p.textContent = 'MEASURED' + JSON.stringify({imgs: imgs, height: document.documentElement.scrollHeight}) + 'END';
  document.body.appendChild(p); });</script>"""


def test_report_renders_every_figure(report, tmp_path):
    from PIL import Image

    chromium = _chromium()
    _, page = report
    # 1. Where does each figure lie? Measure in a copy of the page with a measuring script added.
    probe = page.parent / "measure.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", _MEASURE + "</body>"), encoding="utf-8")
    dom = _run_chromium(chromium, tmp_path / "profile-a", probe.as_uri(), 6000, "--dump-dom")
    found = re.findall(r"MEASURED(\{.*?\})END", dom)
    assert found, f"the measuring script did not run: {dom[-500:]}"
    measured = json.loads(found[-1])
    imgs = {m["id"]: m for m in measured["imgs"]}
    assert sorted(imgs) == sorted(f"fig-{n}" for n in FIGURES)
    for name in FIGURES:
        m = imgs[f"fig-{name}"]
        with Image.open(page.parent / f"{name}.png") as im:
            assert m["complete"] and m["natural"] == list(im.size), f"{name}: the image did not decode in Chromium"
    bottom = max(m["box"][1] + m["box"][3] for m in imgs.values())
    # 2. Screenshot the real page (no script in it), tall enough to hold every figure.
    shot = tmp_path / "shot.png"
    height = max(6000, int(bottom) + 200)
    _run_chromium(chromium, tmp_path / "profile-b", page.as_uri(), height, f"--screenshot={shot}")
    screen = np.asarray(Image.open(shot).convert("L"), dtype=np.float64) / 255.0
    assert screen.shape[1] == 1400 and screen.shape[0] >= bottom
    # 3. Each figure's region must be drawn, and drawn like its PNG (mean grey and pixels, allowing a 2-px shift).
    for name in FIGURES:
        m = imgs[f"fig-{name}"]
        with Image.open(page.parent / f"{name}.png") as im:
            want = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        left, top = m["box"][0] + m["border"], m["box"][1] + m["border"]
        w, h = int(m["box"][2] - 2 * m["border"]), int(m["box"][3] - 2 * m["border"])
        assert (w, h) == want.shape[::-1], f"{name}: drawn at {w}x{h}, the PNG is {want.shape[::-1]}"
        inset = 4
        ref = want[inset : h - inset, inset : w - inset]
        errors = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                y0, x0 = round(top) + inset + dy, round(left) + inset + dx
                region = screen[y0 : y0 + ref.shape[0], x0 : x0 + ref.shape[1]]
                if region.shape == ref.shape:
                    errors.append(float(np.abs(region - ref).mean()))
        region = screen[round(top) : round(top) + h, round(left) : round(left) + w]
        inked = float((region < 0.85).mean())
        assert inked > 0.01, f"{name}: its region of the screenshot is blank ({inked:.4f} of pixels inked)"
        assert abs(region.mean() - want.mean()) < 0.02, f"{name}: the region does not look like {name}.png"
        assert errors and min(errors) < 0.02, f"{name}: the region differs from {name}.png (error {min(errors):.3f})"
