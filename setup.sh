#!/usr/bin/env bash
# Creates ./.venv with this project installed (editable) and its test tools.
# TORCH_SPEC picks the torch build: the default is the release the suite is tested with; on a GPU machine
# any CUDA build works, e.g. TORCH_SPEC="torch" ./setup.sh
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
echo "setup.sh: environment ready in .venv ($(.venv/bin/python -c 'import torch, ray; print("torch", torch.__version__, "ray", ray.__version__)'))"
