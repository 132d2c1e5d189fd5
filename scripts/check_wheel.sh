#!/usr/bin/env bash
# Builds pygev's wheel with `maturin build --release`, installs it into a fresh venv (no
# source tree on the path) and checks it there: the version (one source, Cargo.toml),
# the license and metadata, the type stubs, and an echo through a real socket.
#
#   bash scripts/check_wheel.sh        (run by scripts/test.sh; needs maturin, from .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
maturin build --release -o "$out/dist" > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
wheel=$(ls "$out"/dist/pygev-*.whl)
python3 -m venv "$out/venv"
"$out/venv/bin/pip" install -q --no-index "$wheel"
cd "$out"
"$out/venv/bin/python" - "$(basename "$wheel")" <<'PY'
import importlib.metadata as metadata
import pathlib
import socket
import sys
import threading

import pygev

wheel = sys.argv[1]
dist = metadata.distribution("pygev")
assert pygev.__version__ == dist.version, (pygev.__version__, dist.version)
assert f"-{dist.version}-" in wheel, (wheel, dist.version)
assert "site-packages" in pygev.__file__, f"not the installed wheel: {pygev.__file__}"
meta = dist.metadata
assert meta["License-File"] or "MIT" in (meta["License"] or ""), dict(meta)
assert "License :: OSI Approved :: MIT License" in meta.get_all("Classifier")
licenses = [f for f in dist.files if f.name == "LICENSE"]
assert licenses and "Allenxuxu/gev" in licenses[0].read_text(), "LICENSE with gev's notice"
assert (pathlib.Path(pygev.__file__).parent / "py.typed").exists()
assert (pathlib.Path(pygev.__file__).parent / "_pygev.pyi").exists()


class Echo(pygev.Handler):
    def on_message(self, conn, ctx, data):
        return data


server = pygev.Server(Echo(), "127.0.0.1:0")
thread = threading.Thread(target=server.start, daemon=True)
thread.start()
with socket.create_connection(server.address, timeout=10) as sock:
    sock.sendall(b"wheel")
    assert sock.recv(5) == b"wheel"
server.stop()
thread.join(10)
print(f"wheel ok: {wheel}, pygev {pygev.__version__}, echo through the installed wheel")
PY
