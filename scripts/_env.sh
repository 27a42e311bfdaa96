# Sourced by scripts/demo and scripts/test: create .venv when missing and install coinfer into it.
# Installs everything (the base and the planner, bench and test extras: coinfer[all]) with the lock,
# requirements/lock.txt (scripts/lock), as constraints, so every machine gets the same versions.
# Re-installs only when pyproject.toml or the lock changed since the last install (a stamp file records
# their hash). COINFER_VENV puts the environment elsewhere (default .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COINFER_VENV:-$ROOT/.venv}"
PYTHON="${COINFER_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x "$VENV/bin/python" ]; then
  echo "[coinfer] creating $VENV with $($PYTHON --version)" >&2
  "$PYTHON" -m venv "$VENV"
fi
STAMP="$VENV/.coinfer-installed"
LOCK="$ROOT/requirements/lock.txt"
# (without a lock, e.g. removed to re-resolve from scratch with scripts/lock, installs go unconstrained)
constraints=(); [ -f "$LOCK" ] && constraints=(-c "$LOCK")
WANT="$(cat "$ROOT/pyproject.toml" "$LOCK" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$WANT" ]; then
  echo "[coinfer] installing into $VENV (torch 2.13.0 CPU wheel first, so nothing pulls a CUDA build)" >&2
  # (this machine's pip configuration warns about every missing local index folder: filtered out)
  # (the lock pins torch==2.13.0+cpu: a local wheel or PyTorch's CPU index, PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${constraints[@]}" "torch==2.13.0" 2> >(grep -v "is ignored" >&2)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${constraints[@]}" -e "$ROOT[all]" 2> >(grep -v "is ignored" >&2)
  echo "$WANT" > "$STAMP"
fi
# Model weights come from local folders only; never let a library reach for a hub.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
