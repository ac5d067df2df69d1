"""Where the solver fits (`probe --device`, `sweep --device`, `solver_device` in a pipeline config): the CPU by
default and when asked; a device that is not there is refused in one line before any work; on CUDA (when a GPU is
present) the same fits as on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spin_cache.errors import InputError
from spin_cache.fit.solver import HEAD_C_GRID, Design, fit_c_path, solver_device

from .conftest import probed_synthetic_store, sweep_probed

NO_CUDA = not torch.cuda.is_available()


def _problem(n_classes: int, seed: int = 0) -> tuple[Design, Design]:
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((400, 30)).astype(np.float32)
    y = (x[:, :n_classes] + gen.standard_normal((400, n_classes))).argmax(axis=1)
    return Design.of(x[:300], y[:300]), Design.of(x[300:], y[300:])


def test_the_cpu_asked_for_is_the_default_path():
    train, dev = _problem(3)
    default = fit_c_path(train, dev, 3, HEAD_C_GRID[:4], penalty="l2")
    asked = fit_c_path(train, dev, 3, HEAD_C_GRID[:4], penalty="l2", device=solver_device("cpu"))
    assert asked.c == default.c and asked.history == default.history
    np.testing.assert_array_equal(asked.fit.coef, default.fit.coef)
    assert train.to(torch.device("cpu")) is train


def test_a_streamed_design_moves_block_by_block():
    """`Design.to` keeps a streamed design streamed: its blocks are produced again on every pass."""
    train, _ = _problem(2)
    reads = []

    def blocks():
        reads.append(1)
        for x, y in train.blocks():
            yield x[:150], y[:150]
            yield x[150:], y[150:]

    streamed = Design(blocks, train.n_rows, train.n_features, device=torch.device("meta"))
    moved = streamed.to(torch.device("cpu"))
    assert moved.device == torch.device("cpu") and not isinstance(moved.blocks(), list)
    for _ in range(2):
        assert sum(len(y) for _, y in moved.blocks()) == train.n_rows
    assert len(reads) == 2


@pytest.mark.parametrize("device", ["cuda", "cuda:1", "cuda:next", "tpu", "cpu:x", "meta"])
def test_a_device_not_here_is_refused_by_the_api_before_any_work(tmp_path, device):
    from spin_cache.loop.probe import run_probes
    from spin_cache.synth import make_synthetic_store

    if device == "cuda:next":  # one past the last CUDA device: refused wherever the test runs
        device = f"cuda:{torch.cuda.device_count()}"
    elif (
        device in ("cuda", "cuda:1") and not NO_CUDA and int(device.partition(":")[2] or 0) < torch.cuda.device_count()
    ):
        pytest.skip(f"{device} is present on this machine")
    store = make_synthetic_store(tmp_path / "store", n_rows=60, n_layers=1, width=8, kinds=("ffn",), informative={1: 2})
    with pytest.raises(InputError, match="device"):
        run_probes(store.url, tmp_path / "probes", scheduler="sync", progress=False, device=device)
    assert not (tmp_path / "probes").exists()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_the_command_line_and_config_refuse_cuda_where_there_is_none(tmp_path, capsys, monkeypatch):
    from spin_cache.cli import main
    from spin_cache.pipeline import load_config
    from spin_cache.synth import make_synthetic_store

    store = make_synthetic_store(tmp_path / "store", n_rows=60, n_layers=1, width=8, kinds=("ffn",), informative={1: 2})
    monkeypatch.chdir(tmp_path)
    for argv in (["probe", store.url, "--out", "p", "--device", "cuda"],
                 ["sweep", store.url, "--probes", "p", "--out", "s", "--device", "cuda"]):  # fmt: skip
        assert main(argv) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists() and not (tmp_path / "s").exists()
    config = tmp_path / "gpu.toml"
    config.write_text('solver_device = "cuda"\n')
    with pytest.raises(InputError, match=r"gpu\.toml: solver_device: .*CUDA is not available"):
        load_config(config)
    config.write_text('solver_device = "cpu"\n')
    assert load_config(config).solver_device == "cpu"


def test_probe_and_sweep_on_the_cpu_asked_for_equal_the_default(tmp_path):
    """The whole loop with device="cpu" passed through every task: the same saliency and the same head."""
    from spin_cache.loop.probe import ProbeSettings, run_probes
    from spin_cache.loop.sweep import SweepSettings, run_sweep

    store, run, root = probed_synthetic_store(tmp_path)
    asked = run_probes(store.url, root / "probes-cpu", ProbeSettings(c_grid=(0.05, 0.2, 1.0)), scheduler="sync",
                       progress=False, device="cpu")  # fmt: skip
    for layer in store.layers("ffn"):
        np.testing.assert_array_equal(asked.saliency("ffn", "mean", layer), run.saliency("ffn", "mean", layer))
    grid = {"values": (0.5, 0.9), "c_grid": (0.01, 0.1)}
    default = sweep_probed((store, run, root), "sweep", grid)
    on_cpu = run_sweep(store.url, run.path, root / "sweep-cpu", SweepSettings(**grid), scheduler="sync",
                       progress=False, device="cpu")  # fmt: skip
    assert on_cpu.table == default.table | {"head": on_cpu.table["head"]}


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(("n_classes", "penalty"), [(2, "l1"), (5, "l2")])
def test_fits_on_cuda_equal_the_cpu_fits(n_classes, penalty):
    train, dev = _problem(n_classes)
    cpu = fit_c_path(train, dev, n_classes, HEAD_C_GRID[:5], penalty=penalty)
    gpu = fit_c_path(train, dev, n_classes, HEAD_C_GRID[:5], penalty=penalty, device=solver_device("cuda"))
    assert gpu.c == cpu.c
    np.testing.assert_allclose(gpu.fit.coef, cpu.fit.coef, rtol=1e-3, atol=1e-4)
