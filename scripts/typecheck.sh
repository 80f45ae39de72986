#!/usr/bin/env bash
# Type checks of the Python package, run by scripts/dev.sh test after ruff:
#   1. mypy on python/fastwds (settings: pyproject.toml [tool.mypy]);
#   2. mypy.stubtest: python/fastwds/_core.pyi against the extension installed in the venv, which must be built
#      from this checkout (names it may skip: tests/stubtest-allowlist.txt).
# Exits non-zero when either finds a problem. FASTWDS_VENV picks the venv, as for scripts/dev.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FASTWDS_VENV:-$HOME/.cache/fastwds-venv}
PY="$VENV/bin/python"
cd "$ROOT"

echo "mypy python/fastwds"
"$PY" -m mypy
echo "stubtest fastwds._core"
# The stub is read from python/ (the config's mypy_path), the extension imported from the venv.
"$PY" -m mypy.stubtest fastwds._core --mypy-config-file pyproject.toml --allowlist tests/stubtest-allowlist.txt
