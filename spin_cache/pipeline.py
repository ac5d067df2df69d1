"""One command, one file: extract -> probe -> sweep -> report from a TOML config, skipping stages whose outputs already
match their inputs (the store by its fingerprint, probes and sweeps by the store fingerprint and settings)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Set
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InputError
from .extract.run import run_extraction
from .extract.settings import ExtractSettings
from .fit.solver import solver_device
from .loop.probe import ProbeRun, ProbeSettings, run_probes
from .loop.sweep import DEFAULT_ETAS, SweepSettings, run_sweep
from .report import write_report

SECTIONS = {"extract", "probe", "sweep"}
# extraction options the config sets at its top level (or run_pipeline's arguments), not in [extract]
TOP_LEVEL_EXTRACT = {"model", "data", "out", "train", "dev", "test", "text_column", "label_column", "progress"}


@dataclass
class PipelineConfig:
    """Everything a run needs. Paths are relative to the working directory."""

    name: str = "minilm-sst2"
    model: str = "minilm"
    data: str = "sst2"
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    store: str | None = None  # default: stores/<fingerprint>
    out: str | None = None  # default: runs/<name>
    scheduler: str | None = None
    workers: int | None = None
    solver_device: str | None = None  # where probes and sweep fit: cpu (default), cuda, cuda:N, auto
    # options of ExtractSettings (kinds, poolings, batch_size, ...)
    extract: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)  # c_grid, metric, max_iter, tol
    sweep: dict[str, Any] = field(default_factory=dict)  # rule, values, c_grid, penalty, seed, max_iter, tol, select,
    # folds, search, patience

    @property
    def out_dir(self) -> Path:
        """Where probes, sweep and report go: `out`, else ``runs/<name>``."""
        return Path(self.out or f"runs/{self.name}")


def load_config(path: str | Path) -> PipelineConfig:
    """Read a pipeline config (TOML); InputError naming the file for a missing file, bad TOML or unknown key."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: config file not found")
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: invalid TOML ({exc})") from exc
    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InputError(f"{p}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    for section in SECTIONS & set(raw):
        if not isinstance(raw[section], dict):
            raise InputError(f"{p}: [{section}] must be a table")
    _check_section(p, "extract", raw.get("extract", {}), ExtractSettings, exclude=TOP_LEVEL_EXTRACT)
    _check_section(p, "probe", raw.get("probe", {}), ProbeSettings)
    _check_section(p, "sweep", raw.get("sweep", {}), SweepSettings)
    try:  # values too (select = "one_se", search, patience, eta values, C grid), before any stage runs
        SweepSettings(**_tuples(raw.get("sweep", {}))).check()
    except InputError as exc:
        raise InputError(f"{p}: [sweep] {exc}") from None
    if raw.get("solver_device") is not None:  # no CUDA here: refused before the extraction, not after it
        try:
            solver_device(str(raw["solver_device"]))
        except InputError as exc:
            raise InputError(f"{p}: solver_device: {exc}") from None
    return PipelineConfig(**raw)


def _check_section(path: Path, name: str, section: dict[str, Any], cls: type, exclude: Set[str] = frozenset()) -> None:
    """Refuse a key of section [name] that is not a field of settings class `cls` (or is one of `exclude`)."""
    allowed = {f.name for f in fields(cls)} - set(exclude)
    bad = sorted(set(section) - allowed)
    if bad:
        raise InputError(f"{path}: [{name}] has unknown key {bad[0]!r}; known keys: {', '.join(sorted(allowed))}")


def run_pipeline(
    cfg: PipelineConfig, *, progress: bool = True, say: object = print, command: str | None = None
) -> dict[str, Any]:
    """Run every stage; return the sweep's result table plus the paths of what was made.

    `command` (the command line) is kept beside the probe and sweep outputs and shown in the report."""
    report = run_extraction(extract_settings(cfg, progress=progress))
    store = report.store
    say(f"[extract] {'cache hit' if report.cache_hit else 'done'}: {store.url}")  # type: ignore[operator]
    out = cfg.out_dir
    probe_settings = ProbeSettings(**_tuples(cfg.probe))
    probe_dir = out / "probes"
    probes = _finished_probes(probe_dir, store.fingerprint, probe_settings)
    if probes is None:
        probes = run_probes(store.url, probe_dir, probe_settings, scheduler=cfg.scheduler, workers=cfg.workers,
                            progress=progress, device=cfg.solver_device)  # fmt: skip
        say(f"[probe] done: {probes.probes.height} probes in {probe_dir}")  # type: ignore[operator]
    else:
        say(f"[probe] up to date: {probe_dir}")  # type: ignore[operator]
    sweep_settings = SweepSettings(**({"metric": probe_settings.metric, "values": DEFAULT_ETAS} | _tuples(cfg.sweep)))
    sweep_dir = out / "sweep"
    table = _finished_sweep(sweep_dir, store.fingerprint, sweep_settings)
    if table is None:
        table = run_sweep(store.url, probe_dir, sweep_dir, sweep_settings, scheduler=cfg.scheduler,
                          workers=cfg.workers, progress=progress, device=cfg.solver_device).table  # fmt: skip
        say(f"[sweep] done: {sweep_dir}")  # type: ignore[operator]
    else:
        say(f"[sweep] up to date: {sweep_dir}")  # type: ignore[operator]
    if command:
        for folder in (probe_dir, sweep_dir):
            (folder / "command.txt").write_text(command + "\n")
    report_path = write_report(sweep_dir, out / "report")
    say(f"[report] {report_path}")  # type: ignore[operator]
    return {"store": store.url, "probes": str(probe_dir), "sweep": str(sweep_dir), "report": str(report_path),
            "table": table}  # fmt: skip


def extract_settings(cfg: PipelineConfig, *, progress: bool = True) -> ExtractSettings:
    """The extraction a config asks for: its model, data and store, and the options of its [extract] section."""
    return ExtractSettings(
        model=cfg.model, data=cfg.data, out=cfg.store, train=cfg.train, dev=cfg.dev, test=cfg.test,
        text_column=cfg.text_column, label_column=cfg.label_column, progress=progress, **_tuples(cfg.extract),
    )  # fmt: skip


def _tuples(section: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}


def _finished_probes(path: Path, fingerprint: str, settings: ProbeSettings) -> ProbeRun | None:
    try:
        run = ProbeRun(path)
    except Exception:
        return None
    same = run.store_fingerprint == fingerprint and run.settings == settings
    return run if same else None


def _finished_sweep(path: Path, fingerprint: str, settings: SweepSettings) -> dict[str, Any] | None:
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    want = json.loads(json.dumps(asdict(settings)))
    if summary.get("store_fingerprint") == fingerprint and summary.get("settings") == want:
        value: dict[str, Any] = summary["table"]
        return value
    return None
