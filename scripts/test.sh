#!/usr/bin/env bash
# The test command: lint, format check, the type checker and the whole test suite.
. "$(dirname "$0")/env.sh"
ruff check spin_cache tests benchmarks pipelines
ruff format --check spin_cache tests benchmarks pipelines
mypy
python -m pytest -q "$@"
