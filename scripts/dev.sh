#!/usr/bin/env bash
# fastwds developer entry point.
#   scripts/dev.sh demo   build, then run the benchmark harness on its built-in sample datasets (quick size)
#   scripts/dev.sh test   build, then every check CI runs: rustfmt, clippy, cargo tests, ruff, pytest, wheel
#   scripts/dev.sh bench  build, add torchvision and DALI, then the full benchmark harness (several minutes)
#   scripts/dev.sh build  create/update the venv and build the extension into it
# The venv lives outside the checkout (torch is several GB) and is reused when present:
# FASTWDS_VENV overrides its place.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FASTWDS_VENV:-$HOME/.cache/fastwds-venv}
PY="$VENV/bin/python"
cd "$ROOT"

step() { printf '\n== %s\n' "$*"; }

ensure_toolchain() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
}

ensure_build_tools() {
    # libjpeg-turbo is built from source (statically, into the wheel) and needs cmake and nasm.
    if command -v cmake >/dev/null && command -v nasm >/dev/null; then
        return
    fi
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing cmake and nasm (to build libjpeg-turbo)"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake nasm >/dev/null
    else
        echo "cmake and nasm are needed to build libjpeg-turbo: install them (e.g. apt-get install cmake nasm)" >&2
        exit 1
    fi
}

ensure_venv() {
    if [ ! -x "$PY" ]; then
        step "creating venv $VENV"
        python3 -m venv "$VENV"
    fi
    # Reinstall only when requirements-dev.txt changed since the last install into this venv.
    local stamp="$VENV/.fastwds-requirements"
    if ! cmp -s requirements-dev.txt "$stamp"; then
        step "installing test dependencies (torch is large: first time only)"
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -r requirements-dev.txt
        cp requirements-dev.txt "$stamp"
    fi
}

ensure_bench_extras() {
    # Optional: a failed install leaves their rows n/a instead of stopping the benchmark.
    local stamp="$VENV/.fastwds-bench-requirements"
    if ! cmp -s requirements-bench.txt "$stamp"; then
        step "installing the benchmark's optional comparisons (torchvision, NVIDIA DALI)"
        local torch
        torch=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
        if "$PY" -m pip install -q -r requirements-bench.txt "torch==$torch"; then
            cp requirements-bench.txt "$stamp"
        else
            echo "warning: could not install requirements-bench.txt; the harness prints those rows as n/a" >&2
        fi
    fi
}

build() {
    ensure_toolchain
    ensure_build_tools
    ensure_venv
    step "building the extension (release) into $VENV"
    PYO3_PYTHON="$PY" VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" maturin develop --release -q
}

wheel_check() {
    step "wheel: build, install into a clean venv without cargo on PATH, read a shard"
    rm -rf target/wheels
    PYO3_PYTHON="$PY" "$VENV/bin/maturin" build --release -q -o target/wheels
    local clean
    clean=$(mktemp -d)
    python3 -m venv "$clean/venv"
    "$clean/venv/bin/pip" install -q target/wheels/fastwds-*.whl
    (cd "$clean" && env -i PATH=/usr/bin:/bin HOME="$clean" "$clean/venv/bin/python" "$ROOT/tests/wheel_smoke.py")
    rm -rf "$clean"
}

cmd=${1:-}
case "$cmd" in
    build)
        build
        ;;
    demo)
        build
        step "benchmark harness on the built-in sample datasets (quick size)"
        "$PY" benches/harness.py --quick
        ;;
    bench)
        build
        ensure_bench_extras
        "$PY" benches/harness.py "${@:2}"
        ;;
    test)
        build
        step "rustfmt";  cargo fmt --all --check
        step "clippy";   PYO3_PYTHON="$PY" cargo clippy --workspace --all-targets -q -- -D warnings
        step "cargo test"; PYO3_PYTHON="$PY" cargo test --workspace -q
        step "ruff";     "$VENV/bin/ruff" check python tests benches examples
        "$VENV/bin/ruff" format --check python tests benches examples
        step "pytest";   "$PY" -m pytest -q -p no:cacheprovider
        wheel_check
        ;;
    *)
        sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
