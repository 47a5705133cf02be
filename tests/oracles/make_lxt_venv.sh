#!/usr/bin/env bash
# Build .venv-lxt, the separate virtual environment of the LXT oracle (tests/test_lxt.py).
# LXT 2.1 imports only with transformers 4.52.4 (transformers 5 breaks `import lxt.efficient`),
# which the main .venv does not pin; so the oracle lives in its own environment and runs as a
# subprocess (tests/oracles/lxt_oracle.py). Usage: bash tests/oracles/make_lxt_venv.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${1:-.venv-lxt}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
echo "*" > "$VENV/.gitignore"   # the environment is never committed
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet torch==2.14.1 torchvision==0.29.1 lxt==2.1 transformers==4.52.4 \
    zennit==0.5.1 onnx
touch "$VENV/.installed"
