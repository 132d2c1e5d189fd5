#!/usr/bin/env bash
# Instructions per message of a pygev server, counted by callgrind (user space only): for
# changes too small to time on a noisy machine. Runs the server under valgrind, counts only
# while the load generator runs, and prints Ir per echoed message.
#
#   bash benches/icount.sh lp|lp-serve|lp-async|ws|ws16k|raw|unix [SITE [REPO]]
#
#   lp     examples/echo.py --framing length, 100 connections x 64 B x 16 in flight
#   lp-serve   the same under await server.serve() (examples/asyncio_echo.py)
#   lp-async   the same with an async def on_message (asyncio_echo.py --async)
#   ws     examples/websocket_echo.py, 100 x 64 B x 16
#   ws16k  examples/websocket_echo.py, 50 x 16 KiB x 4
#   raw    examples/echo.py, 50 x 4 KiB x 8
#   unix   examples/echo.py --unix, 50 x 4 KiB x 8
#
# SITE and REPO run another build (PYTHONPATH=SITE, REPO's examples), e.g. a baseline from
# benches/build_baseline.sh: bash benches/icount.sh lp benches/build/baseline/site \
# benches/build/baseline/repo. Needs valgrind; builds the load generator if missing.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
shape=${1:?usage: icount.sh lp|lp-serve|lp-async|ws|ws16k|raw|unix [SITE [REPO]]}
site=${2:-}
repo=${3:-$here}
python=${PYTHON:-python}
loadgen=$here/benches/build/loadgen
[ -x "$loadgen" ] || { mkdir -p "$here/benches/build"; gcc -O2 -o "$loadgen" "$here/benches/loadgen.c" -lssl -lcrypto; }
work=$(mktemp -d)
# KEEP=DIR keeps callgrind's output there (for callgrind_annotate).
trap 'if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$work"/cg.out* "$KEEP"/; fi; rm -rf "$work"' EXIT
port=$((20000 + RANDOM % 20000))
target=(-H 127.0.0.1 -p "$port")
case "$shape" in
    lp) server=(examples/echo.py --framing length --port "$port" --loops 1)
        load=(-c 100 -s 64 -i 16 -f 4) ;;
    lp-serve) server=(examples/asyncio_echo.py --framing length --port "$port" --loops 1)
        load=(-c 100 -s 64 -i 16 -f 4) ;;
    lp-async) server=(examples/asyncio_echo.py --framing length --async --port "$port" --loops 1)
        load=(-c 100 -s 64 -i 16 -f 4) ;;
    ws) server=(examples/websocket_echo.py --port "$port")
        load=(-c 100 -s 64 -i 16 -W) ;;
    ws16k) server=(examples/websocket_echo.py --port "$port")
        load=(-c 50 -s 16384 -i 4 -W) ;;
    raw) server=(examples/echo.py --port "$port" --loops 1)
        load=(-c 50 -s 4096 -i 8) ;;
    unix) server=(examples/echo.py --unix "$work/echo.sock" --loops 1)
        target=(-U "$work/echo.sock")
        load=(-c 50 -s 4096 -i 8) ;;
    *) echo "unknown shape $shape" >&2; exit 2 ;;
esac
cd "$repo"
PYTHONPATH=$site valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/cg.out" "$python" "${server[@]}" > "$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 240); do grep -q "listening" "$work/server.log" && break; sleep 0.5; done
callgrind_control -i on "$server_pid" > /dev/null
result=$("$loadgen" "${target[@]}" "${load[@]}" -d 4 -w 0)
callgrind_control -i off "$server_pid" > /dev/null
callgrind_control -d "$server_pid" > /dev/null
sleep 1
# SIGINT for start() (the examples' Ctrl+C), SIGTERM for serve() (a background job
# inherits SIGINT ignored, which asyncio leaves so).
kill -INT "$server_pid"
for _ in $(seq 1 20); do kill -0 "$server_pid" 2> /dev/null || break; sleep 0.5; done
kill -TERM "$server_pid" 2> /dev/null || true
wait "$server_pid" 2> /dev/null || true
messages=$(echo "$result" | tail -1 | "$python" -c 'import json, sys; print(json.load(sys.stdin)["messages"])')
ir=$(cat "$work"/cg.out* | awk '/^totals:/ {s += $2} END {print s}')
"$python" -c "print(f'$shape: {$messages:,} messages, {$ir:,} Ir, {$ir / $messages:,.0f} Ir per message')"
