# Sourced by scripts/demo and scripts/test: create .venv when missing and install coinfer into it.
# Re-installs only when pyproject.toml changed since the last install (a stamp file records its hash).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${COINFER_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  echo "[coinfer] creating $VENV with $($PYTHON --version)" >&2
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.coinfer-installed"
WANT="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[coinfer] installing into $VENV (torch 2.13.0 CPU wheel first, so nothing pulls a CUDA build)" >&2
  # (this machine's pip configuration warns about every missing local index folder: filtered out)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" 2> >(grep -v "is ignored" >&2)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[test]" 2> >(grep -v "is ignored" >&2)
  echo "$WANT" > "$STAMP"
fi
# Model weights come from local folders only; never let a library reach for a hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
