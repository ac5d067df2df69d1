"""Bad options and unexpected failures at the command line: one line, the right exit code, no traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import spin_cache.errors as errors
from spin_cache.cli import main

ROOT = Path(__file__).resolve().parents[1]

# (command line, option named in the error): every numeric or list option of every command is checked at the
# boundary by the declarative constraints in spin_cache.validation, before any file is opened.
BAD_OPTIONS = [
    ("extract --batch-size -5", "--batch-size"),
    ("extract --batch-size 0", "--batch-size"),
    ("extract --max-length 0", "--max-length"),
    ("extract --block-rows -1", "--block-rows"),
    ("extract --chunk-cols 0", "--chunk-cols"),
    ("extract --workers 0", "--workers"),
    ("extract --shard 3/2", "--shard"),
    ("extract --poolings ''", "--poolings"),
    ("extract --poolings mean,,max", "--poolings"),
    ("extract --poolings median", "--poolings"),
    ("extract --kinds attention", "--kinds"),
    ("predict H --text x --batch-size -5", "--batch-size"),
    ("predict H --text x --batch-size 0", "--batch-size"),
    ("probe S --out R --C nan", "--C"),
    ("probe S --out R --C -1", "--C"),
    ("probe S --out R --C 0", "--C"),
    ("probe S --out R --C inf", "--C"),
    ("probe S --out R --C ''", "--C"),
    ("probe S --out R --memory-budget 0", "--memory-budget"),
    ("probe S --out R --memory-budget lots", "--memory-budget"),
    ("probe S --out R --workers 0", "--workers"),
    ("probe S --out R --poolings ''", "--poolings"),
    ("sweep S --probes P --out O --eta 0", "--eta"),
    ("sweep S --probes P --out O --eta 1.5", "--eta"),
    ("sweep S --probes P --out O --eta nan", "--eta"),
    ("sweep S --probes P --out O --top-k 0", "--top-k"),
    ("sweep S --probes P --out O --top-k 2.5", "--top-k"),
    ("sweep S --probes P --out O --top-percent 101", "--top-percent"),
    ("sweep S --probes P --out O --C -0.1", "--C"),
    ("sweep S --probes P --out O --seed -1", "--seed"),
    ("sweep S --probes P --out O --memory-budget -3G", "--memory-budget"),
    ("synth --out X --rows 0", "--rows"),
    ("synth --out X --classes 1", "--classes"),
    ("synth --out X --signal nan", "--signal"),
    ("synth --out X --ffn-width 0", "--ffn-width"),
    ("synth --out X --informative 3:0", "--informative"),
]


@pytest.mark.parametrize(("command", "option"), BAD_OPTIONS)
def test_bad_numeric_or_list_option_is_one_line_exit_2(command, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written anywhere, not even by accident
    argv = [a.strip("'") for a in command.split()]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert f"argument {option}" in err and "--help" in err
    assert not list(tmp_path.iterdir())


def test_bad_option_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "spin_cache.cli", "predict", "h", "--text", "x", "--batch-size", "-5"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_exit_codes_live_in_one_place():
    """Every error class's code is documented, and --help and the README list exactly the codes of errors.py."""
    classes = [errors.InputError, errors.StoreMismatchError, errors.IntegrityError, errors.StoreBusyError]
    assert all(c.exit_code in errors.EXIT_CODES for c in classes)
    from spin_cache.store.lock import StoreLockedError

    assert StoreLockedError.exit_code in errors.EXIT_CODES
    readme = (ROOT / "README.md").read_text()
    listed = {int(m) for m in re.findall(r"^\|\s*`(\d+)`\s*\|", readme, flags=re.M)}
    assert listed == set(errors.EXIT_CODES)
    from spin_cache.cli import build_parser

    help_text = build_parser().format_help()
    for code in errors.EXIT_CODES:
        assert re.search(rf"^\s+{code}\s", help_text, flags=re.M), code


def test_unexpected_error_is_one_line_and_a_log_file(monkeypatch, tmp_path, capsys):
    """A bug inside spin-cache still prints one line; the traceback goes to a log file the line names."""
    import spin_cache.cli as cli

    def broken(url, options=None):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setenv("SPIN_CACHE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.setattr("spin_cache.store.remote.open_store", broken)  # `info` opens the store through it
    assert cli.main(["info", "somewhere"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "internal error: RuntimeError" in err
    log = Path(re.search(r"traceback in (\S+);", err).group(1))
    assert log.parent == tmp_path / "logs"
    text = log.read_text()
    assert "Traceback" in text and "something nobody planned for" in text and "spin-cache info somewhere" in text


def test_local_permission_error_names_the_file_not_s3(tmp_path, monkeypatch, capsys):
    """A local permission error names the local file; it is never reported as an S3 credentials problem."""
    local = tmp_path / "store" / "zarr.json"

    def denied(url, options=None):
        raise PermissionError(13, "Permission denied", str(local))

    monkeypatch.setattr("spin_cache.store.remote.open_store", denied)
    code = main(["info", str(tmp_path / "store")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert str(local) in err and "permission denied" in err
    assert "AWS" not in err and "bucket" not in err
