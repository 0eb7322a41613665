#!/usr/bin/env bash
# Builds .venv for merc on a fresh machine. torch goes in first and alone, so pip takes the CPU
# build from local disk instead of resolving a multi-GB CUDA build through another package.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

if ! command -v espeak-ng >/dev/null 2>&1; then
  echo "setup: installing espeak-ng (speaks the synthetic corpora)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null) \
      || { echo "setup: apt-get install espeak-ng failed" >&2; exit 1; }
  else
    echo "setup: espeak-ng is missing; run: sudo apt-get install -y espeak-ng" >&2; exit 1
  fi
fi

# pip's own noise about local index folders is filtered; its exit status is kept.
pipq() { "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
check() { [ "${MERC_ALLOW_CUDA_TORCH:-0}" = 1 ] || "$VENV/bin/python" tools/check_torch.py; }

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pipq "torch==2.13.0"
check
pipq -c constraints.txt -e ".[dev]"
check
"$VENV/bin/python" -c "import merc.extract, merc.heads" || { echo "setup: merc does not import" >&2; exit 1; }
touch "$VENV/.installed"
echo "setup: ready ($VENV)"
