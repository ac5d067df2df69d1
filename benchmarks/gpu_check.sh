#!/usr/bin/env bash
# One-shot GPU check, the whole device command: installs the wheels spin-cache needs beyond the device's own
# packages, shows the GPU, runs benchmarks/gpu_check.py (arguments passed through) and keeps its output.
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options]
#
# The wheels (zarr, numcodecs, google-crc32c, donfig, polars, polars-runtime-32; built for CPython 3.12,
# manylinux x86_64) lie in the git-ignored .whl/ folder, which the device run carries. They go into their own
# folder (--no-deps: nothing the device already has, numpy or typing_extensions, is shadowed).
# To fill .whl/ (versions as in the local venv; CPython 3.12 as on the device):
#   for w in zarr==3.1.6 numcodecs==0.16.6 google-crc32c==1.9.0 donfig==0.8.1.post1 polars==2.1.0 \
#            polars-runtime-32==2.1.0; do
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl "$w"; done
# (polars-runtime-32's wheel is 54 MB; recompressed with LZMA it is 33 MB, which keeps the carried tree under the
# device tool's 64 MiB.)
# Output: $OUT/gpu_check.log (everything), $OUT/gpu_check.txt and $OUT/gpu_check.json (from gpu_check.py).
# Exit status: gpu_check.py's (1: a check failed), 3 when the wheels do not install.
set -o pipefail
cd "$(dirname "$0")/.." || exit 2
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/site}
export OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if python3 -m pip --version >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$WHEELS"/*.whl
else  # no pip: these wheels have no .data folders, so unpacking them is installing them
    python3 -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
        "$SITE" "$WHEELS"/*.whl
fi || { echo "gpu_check.sh: installing the wheels from $WHEELS into $SITE failed" >&2; exit 3; }
export PYTHONPATH=$SITE:$PWD
{
    echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC') $(hostname) $(python3 -V 2>&1) $(nproc) CPUs"
    nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm --format=csv 2>&1 || echo "(no nvidia-smi)"
    df -h "${TMPDIR:-/tmp}" | tail -1
    free -g | head -2
} 2>&1 | tee "$OUT/gpu_check.log"
PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
exit $?
