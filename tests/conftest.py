"""Shared fixtures: small slices of the bundled SST-2 and a small MiniLM store made once per session."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

REPO = Path(__file__).resolve().parent.parent
SST2 = REPO / "data" / "sst2"


def write_sst2_slice(folder: Path, n_train: int, n_dev: int, n_test: int) -> dict[str, str]:
    """The first rows of each bundled SST-2 split, as `LABEL TEXT` files; returns {split: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        lines = (SST2 / f"{split}.txt").read_text().splitlines()[:n]
        path = folder / f"{split}.txt"
        path.write_text("\n".join(lines) + "\n")
        paths[split] = str(path)
    return paths


@pytest.fixture(scope="session")
def tiny_sst2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_sst2_slice(tmp_path_factory.mktemp("tiny_sst2"), 48, 16, 16)


@pytest.fixture(scope="session")
def small_store(tmp_path_factory: pytest.TempPathFactory, tiny_sst2: dict[str, str]) -> str:
    """A complete MiniLM store over 80 SST-2 rows, in blocks of 32 (so three blocks, the last partial)."""
    from spin_cache.extract.run import run_extraction

    out = tmp_path_factory.mktemp("stores") / "small"
    report = run_extraction(**tiny_sst2, out=str(out), block_rows=32, batch_size=8, progress=False)
    assert report.store.is_complete
    return str(out)


@pytest.fixture(scope="session")
def head_dir(small_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real head (hidden/mean) from the session's small store and the shared probe run, fitted once and only
    read by the tests that use it (they copy it before changing anything)."""
    from spin_cache.loop.sweep import SweepSettings, run_sweep
    from tests.test_report import shared_probes

    run = shared_probes(small_store, tmp_path_factory)
    out = tmp_path_factory.mktemp("small-head") / "sweep"
    settings = SweepSettings(values=(0.5,), c_grid=(1.0,), max_iter=50)
    res = run_sweep(small_store, run.path, out, settings, kinds=["hidden"], poolings=["mean"], scheduler="sync",
                    progress=False)  # fmt: skip
    return Path(res.table["head"])


@pytest.fixture(scope="session")
def predictor(head_dir: Path):  # -> spin_cache.serve.predict.Predictor
    from spin_cache.serve.predict import Predictor

    return Predictor(head_dir, device="cpu", batch_size=2)


# ---- a small synthetic store and its probe run, for sweep tests that need no model ---------------------------------


@contextlib.contextmanager
def kernel_unbuildable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: object, loader: Callable[[], object],
                       name: str) -> Iterator[None]:  # fmt: skip
    """A C++ kernel that cannot be built: an empty cache, no compiler and no ninja on PATH, and another build name for
    `module`'s kernel (torch numbers the builds of one name by their directories, so a failed try under the real
    name would make the next load in this process build the kernel again under a new number). `loader` (the
    module's lru-cached kernel function) is cleared before and after."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built here yet
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(module, "_build_name", lambda: name)
    loader.cache_clear()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        loader.cache_clear()  # type: ignore[attr-defined]


def probed_synthetic_store(root: Path, **store_options: object) -> tuple:  # (ActivationStore, ProbeRun, root)
    """A synthetic FFN store under `root` (3 layers of 40 neurons, signal planted in layers 2 and 3, unless
    `store_options` say otherwise) and its probe run over a three-value C grid."""
    from spin_cache.loop.probe import ProbeSettings, run_probes
    from spin_cache.synth import make_synthetic_store

    options = {"n_layers": 3, "width": 40, "kinds": ("ffn",), "informative": {2: 3, 3: 2}, "signal": 0.4,
               "block_rows": 128} | store_options  # fmt: skip
    store = make_synthetic_store(root / "store", **options)
    run = run_probes(store.url, root / "probes", ProbeSettings(c_grid=(0.05, 0.2, 1.0)), scheduler="sync",
                     progress=False)  # fmt: skip
    return store, run, root


def sweep_probed(probed: tuple, name: str, grid: dict, **settings: object):  # -> SweepResult
    """The sweep of `probed_synthetic_store`'s run into ROOT/`name`, with `grid` and `settings` as SweepSettings."""
    from spin_cache.loop.sweep import SweepSettings, run_sweep

    store, run, root = probed
    return run_sweep(store.url, run.path, root / name, SweepSettings(**grid, **settings), scheduler="sync",
                     progress=False)  # fmt: skip


# ---- markers: `pytest -m "not slow and not server"` is the quick loop; scripts/test.sh runs everything -----------

# Modules that start servers on loopback (a Dask scheduler and workers, moto's S3) or a browser.
SERVER_MODULES = {"test_dask", "test_remote"}
# Modules and tests that take more than a few seconds each on two cores (model runs, subprocesses, a browser).
SLOW_MODULES = {"test_dask", "test_remote", "test_report", "test_peers_smoke", "test_loop_scale"}
# A name with a parameter id ("test_x[param]") marks that case only. Every stage keeps quick tests: the library
# side of the command-line checks below, probe and sweep on synthetic stores, extraction on the session's store and
# a tiny GPT-2, the kernels, explain and predict on the session's head, the solver on small problems.
SLOW_TESTS = {
    # end-to-end runs of the loop on the real MiniLM store (probe with the full C grid, sweep, predict)
    "test_probe_outputs_schema",
    "test_probe_refuses_another_store_and_resumes",
    "test_sweep_outputs_and_table",
    "test_sweep_reads_each_column_once",
    "test_cli_sweep_json_and_predict_agree_with_cached_features",
    "test_predict_refuses_another_model",
    "test_same_inputs_give_identical_outputs",
    "test_multiclass_end_to_end",
    # synthetic, but many fits: the streamed sweep refits every configuration on row blocks; the 5-class L1 path
    "test_streamed_sweep_matches_in_memory",
    "test_objective_no_worse_than_the_fixed_step_along_the_path[l1-5]",
    # the command line in a child process (each pays the imports again); the library half is tested quickly
    "test_damaged_store_chunk_is_one_integrity_line_from_probe_and_sweep",
    "test_cli_sweep_on_a_damaged_ordered_copy_exits_4_with_one_line",
    "test_damaged_probe_run_side_files_are_integrity_errors[run.json]",
    "test_damaged_probe_run_side_files_are_integrity_errors[probes.parquet]",
    "test_damaged_probe_run_side_files_are_integrity_errors[neuron_scores.parquet]",
    "test_damaged_probe_run_side_files_are_integrity_errors[missing neuron_scores.parquet]",
    "test_damaged_probe_run_side_files_are_integrity_errors[ordered zarr.json]",
    "test_a_memory_budget_below_one_row_block_is_refused_up_front",
    "test_cli_refuses_label_unseen_in_train",
    "test_cli_extract_refuses_model_without_tokenizer_files",
    "test_cli_extract_refuses_tokenizer_of_unknowns",
    "test_bad_option_in_a_real_process_has_no_traceback",
    # two of the four explanation cases (each kind and each centering keep one quick case)
    "test_mean_pooling_adds_up[True-hidden]",
    "test_mean_pooling_adds_up[False-ffn]",
    # real-model extraction, and the whole pipeline from a TOML file
    "test_inf_at_padded_positions_is_pooled_again_exactly",
    "test_an_extraction_without_the_kernel_stores_the_same_values",
    "test_run_makes_every_stage_then_skips_them",
    "test_kill9_mid_extraction_then_resume_equals_uninterrupted",
    "test_two_worker_processes_equal_a_single_worker",
    "test_a_second_writer_is_refused_and_readers_see_incomplete",
    "test_shards_by_hand",
    "test_dtypes_bfloat16_and_float32",
    "test_two_processes_racing_for_an_s3_lock_exactly_one_wins",
    "test_an_s3_lock_is_refused_while_held_and_a_malformed_one_is_named",
    "test_two_processes_taking_over_one_stale_lock_exactly_one_wins",
    "test_local_cluster_listens_on_loopback_only_and_serves_no_dashboard",
    "test_damaged_ordered_copy_is_an_integrity_error_from_every_scheduler",
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (model runs, subprocesses, a browser)")
    config.addinivalue_line("markers", "server: starts a server on loopback (Dask scheduler, moto S3)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        name = item.originalname if hasattr(item, "originalname") else item.name
        if module in SLOW_MODULES or name in SLOW_TESTS or item.name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
        if module in SERVER_MODULES or "s3" in name:
            item.add_marker(pytest.mark.server)


# ---- the quick set stays quick: a test of it that runs longer than this is named at the end of the run -----------
# (its own call only: the session's shared fixtures are paid once, by whichever test uses them first)

QUICK_LIMIT_SECONDS = 5.0
_quick_durations: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "slow" not in report.keywords:
        _quick_durations[report.nodeid] = report.duration


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    if "not slow" not in (config.option.markexpr or ""):
        return
    over = sorted(((s, n) for n, s in _quick_durations.items() if s > QUICK_LIMIT_SECONDS), reverse=True)
    if over:
        terminalreporter.section(f"quick-set tests over {QUICK_LIMIT_SECONDS:g} s (make them faster or mark them slow)")
        for seconds, nodeid in over:
            terminalreporter.line(f"{seconds:6.1f} s  {nodeid}")
