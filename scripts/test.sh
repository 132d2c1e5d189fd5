#!/usr/bin/env bash
# Installs pygev with its test and lint tools into .venv, then runs every check and test:
# Rust format, clippy and tests; ruff, mypy and stubtest; the wheel, built and installed
# into a fresh venv; the pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test,lint]"

# Real servers and tools the tests start: installed when missing (as root, with apt-get).
missing=()
command -v redis-server > /dev/null || missing+=(redis-server)
command -v openssl > /dev/null || missing+=(openssl)
command -v haproxy > /dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "== apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
    else
        echo "missing: ${missing[*]} (apt-get install them): their tests will skip" >&2
    fi
fi

echo "== cargo fmt / clippy / test"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test -p pygev-core -p pygev-plugin -p pygev-py

echo "== ruff / mypy / stubtest"
ruff check python tests examples benches
mypy
python -m mypy.stubtest pygev._pygev

echo "== wheel (maturin build --release, installed into a fresh venv)"
bash scripts/check_wheel.sh

echo "== pytest"
python -m pytest -q "$@"
