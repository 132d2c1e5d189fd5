#!/usr/bin/env bash
# Runs the Autobahn|Testsuite and prints its summary line: in fuzzingclient mode against
# the server examples/websocket_echo.py, or with "client" in fuzzingserver mode against the
# client examples/autobahn_client.py. Needs the suite's Python 3 port from
# ../shared/tools/autobahn (set up here on first use: about 30 s, from PyPI).
#
# usage: scripts/autobahn.sh [quick|all|CASES]          the server (default: all 517 cases)
#        scripts/autobahn.sh client [quick|all|CASES]   the client (default: all 517 cases)
#   quick   cases 1-7 and 10 (about 15 s), what the test suite runs
#   CASES   comma-separated patterns, e.g. "9.*,12.1.*"
# env:   AUTOBAHN_TOOLS (default: ../shared/tools/autobahn), AUTOBAHN_OUT (report folder,
#        default: benches/results/autobahn, or benches/results/autobahn-client),
#        PYTHON (default: .venv/bin/python); the tools' own AUTOBAHN_EXCLUDE and
#        AUTOBAHN_TIMEOUT (whole run, default 3600 s) pass through.
# Exit:  0 when no case FAILED or was UNIMPLEMENTED, 1 otherwise, 2 when no report.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="${AUTOBAHN_TOOLS:-../shared/tools/autobahn}"
PYTHON="${PYTHON:-.venv/bin/python}"
MODE=server
if [ "${1:-}" = client ]; then
    MODE=client
    shift
fi
case "${1:-all}" in
    quick) CASES="1.*,2.*,3.*,4.*,5.*,6.*,7.*,10.*" ;;
    all) CASES="*" ;;
    *) CASES="$1" ;;
esac
[ -x "$TOOLS/run.sh" ] || { echo "autobahn.sh: no Autobahn tools at $TOOLS" >&2; exit 2; }
VENV="${AUTOBAHN_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/autobahn-testsuite-py3}"
[ -d "$VENV/autobahntestsuite-py3/autobahntestsuite" ] || "$TOOLS/setup.sh"

# The exit status from the summary line.
verdict() {
    echo "$1"
    case "$1" in
        *" UNIMPLEMENTED=0 FAILED=0 "*) exit 0 ;;
        "autobahn agent="*) exit 1 ;;
        *) exit 2 ;;
    esac
}

if [ "$MODE" = client ]; then
    [ -x "$TOOLS/run-client.sh" ] || { echo "autobahn.sh: no run-client.sh in $TOOLS" >&2; exit 2; }
    out="${AUTOBAHN_OUT:-benches/results/autobahn-client}"
    # run-client.sh starts the fuzzingserver on a free port and fills in {url} and {agent}.
    summary="$(AUTOBAHN_OUT="$out" AUTOBAHN_AGENT=pygev AUTOBAHN_QUIET=1 \
        "$TOOLS/run-client.sh" "$CASES" -- "$PYTHON" examples/autobahn_client.py '{url}' '{agent}' \
        | tail -1 || true)"
    verdict "$summary"
fi

log="$(mktemp)"
"$PYTHON" examples/websocket_echo.py --port 0 --loops 1 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
port=""
for _ in $(seq 100); do
    port="$(sed -n 's/.*listening on .*:\([0-9]*\)$/\1/p' "$log")"
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "autobahn.sh: the echo server did not start:" >&2; cat "$log" >&2; exit 2; }

out="${AUTOBAHN_OUT:-benches/results/autobahn}"
summary="$(AUTOBAHN_OUT="$out" AUTOBAHN_AGENT=pygev AUTOBAHN_QUIET=1 "$TOOLS/run.sh" "$port" "$CASES" | tail -1)"
verdict "$summary"
