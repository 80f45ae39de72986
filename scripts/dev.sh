#!/usr/bin/env bash
# fastwds developer entry point.
#   scripts/dev.sh demo   build, then run the benchmark harness on its built-in sample datasets (quick size)
#   scripts/dev.sh test   release wheel, then every check CI runs: rustfmt, clippy, cargo tests, ruff, mypy and
#                         stubtest, the fuzz crate compiled, pytest, the wheel installed in a clean venv
#   scripts/dev.sh bench  build, add torchvision and DALI, then the full benchmark harness (several minutes)
#   scripts/dev.sh build  create/update the venv and build the extension into it
#   scripts/dev.sh wheel  the release sdist and wheel (zig, manylinux), checked, installed in a clean venv
# The venv lives outside the checkout (torch is several GB) and is reused when present:
# FASTWDS_VENV overrides its place. FASTWDS_PROFILE=profiling builds with line tables (for perf).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${FASTWDS_VENV:-$HOME/.cache/fastwds-venv}
PY="$VENV/bin/python"
# The release wheel (scripts/dev.sh wheel, the last step of test, and the release workflow's Linux jobs): built
# from the sdist by maturin with zig as C compiler and linker, against this glibc (or musl) version whatever the
# machine's, for this Rust target (default: the machine's own); checked against these limits (MB = 10**6 bytes).
WHEEL_TAG=${FASTWDS_WHEEL_TAG:-manylinux_2_17}
WHEEL_TARGET=${FASTWDS_WHEEL_TARGET:-}
MAX_WHEEL_MB=6
MAX_SO_MB=15
DIST="$ROOT/target/dist"
# The wheel step's tools, into the venv: zig (from PyPI's ziglang), auditwheel (checks the tag and the links).
WHEEL_TOOLS=("ziglang==0.17.1" "auditwheel>=6.8,<7")
cd "$ROOT"

# Each step is stamped with the seconds since the start, to see where the time goes.
step() { printf '\n== [%d s] %s\n' "$SECONDS" "$*"; }

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

ensure_wheel_tools() {
    if [ ! -x "$PY" ]; then
        step "creating venv $VENV"
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.fastwds-wheel-tools" want
    want="$(grep -E '^maturin' requirements-dev.txt) ${WHEEL_TOOLS[*]}"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        step "installing the wheel step's tools: $want"
        # shellcheck disable=SC2086
        "$PY" -m pip install -q $want
        echo "$want" >"$stamp"
    fi
}

build() {
    ensure_toolchain
    ensure_build_tools
    ensure_venv
    local profile=${FASTWDS_PROFILE:-release}
    step "building the extension ($profile profile) into $VENV"
    PYO3_PYTHON="$PY" VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" maturin develop --profile "$profile" -q
}

# Builds the sdist and, from it, the release wheel into $DIST (one compile: the wheel proves the sdist builds
# from scratch), and sets WHEEL to the wheel's path.
build_release_wheel() {
    step "release build: sdist, and from it the wheel (zig, ${WHEEL_TAG}${WHEEL_TARGET:+, $WHEEL_TARGET})"
    rm -rf "$DIST"
    local start=$SECONDS
    # target/wheel: its own cargo directory, so a concurrent `maturin develop` does not wait on it.
    PATH="$VENV/bin:$PATH" CARGO_TARGET_DIR="$ROOT/target/wheel" "$VENV/bin/maturin" build -q --release --sdist \
        --zig --compatibility "$WHEEL_TAG" ${WHEEL_TARGET:+--target "$WHEEL_TARGET"} -o "$DIST"
    WHEEL=$(ls "$DIST"/fastwds-*.whl)
    echo "built in $((SECONDS - start)) s: $(cd "$DIST" && ls)"
}

# Checks $WHEEL: tag and links (auditwheel), stripped, sizes; then installs it into a clean venv without cargo on
# PATH and reads and decodes a shard with it.
wheel_check() {
    step "wheel: tag no newer than $WHEEL_TAG, system libraries only, stripped, <= $MAX_WHEEL_MB MB, .so <= $MAX_SO_MB MB"
    "$PY" scripts/check_wheel.py "$WHEEL" --target "$WHEEL_TAG" --max-wheel-mb "$MAX_WHEEL_MB" --max-so-mb "$MAX_SO_MB"
    case "$WHEEL_TAG" in
        musllinux*)
            if ! ldd --version 2>&1 | grep -qi musl; then
                echo "a musllinux wheel does not install here (glibc): the release workflow tests it in Alpine"
                return
            fi
            ;;
    esac
    step "wheel: install into a clean venv without cargo on PATH, read and decode a shard"
    local clean
    clean=$(mktemp -d)
    python3 -m venv "$clean/venv"
    "$clean/venv/bin/pip" install -q "$WHEEL"
    (cd "$clean" && env -i PATH=/usr/bin:/bin HOME="$clean" "$clean/venv/bin/python" "$ROOT/tests/wheel_smoke.py")
    env -i PATH=/usr/bin:/bin HOME="$clean" "$clean/venv/bin/fastwds" --version
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
    wheel)
        ensure_toolchain
        ensure_build_tools
        ensure_wheel_tools
        build_release_wheel
        wheel_check
        ;;
    test)
        # One release compile: the wheel built from the sdist is what the tests import, then what the wheel
        # step checks and installs into a clean venv.
        ensure_toolchain
        ensure_build_tools
        ensure_venv
        ensure_wheel_tools
        build_release_wheel
        step "installing $(basename "$WHEEL") into $VENV"
        "$PY" -m pip install -q --force-reinstall --no-deps "$WHEEL"
        step "rustfmt";  cargo fmt --all --check
        step "clippy";   PYO3_PYTHON="$PY" cargo clippy --workspace --all-targets -q -- -D warnings
        step "cargo test"; PYO3_PYTHON="$PY" cargo test --workspace -q
        step "ruff";     "$VENV/bin/ruff" check python tests benches examples scripts
        "$VENV/bin/ruff" format --check python tests benches examples scripts
        step "mypy, stubtest"; FASTWDS_VENV="$VENV" scripts/typecheck.sh
        step "cargo check (fuzz targets)"; cargo check --manifest-path rust/fuzz/Cargo.toml -q
        step "pytest";   "$PY" -m pytest -q -p no:cacheprovider
        wheel_check
        step "all checks passed"
        ;;
    *)
        sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
