"""The quick part of the Autobahn|Testsuite (cases 1-7 and 10, about 250 cases) against
examples/websocket_echo.py (the suite's fuzzingclient mode) and against the client
examples/autobahn_client.py (its fuzzingserver mode): no case may fail or be
unimplemented. The whole suite (517 cases, compression included) is `scripts/autobahn.sh`
and `scripts/autobahn.sh client`; each takes about 10 minutes."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("AUTOBAHN_TOOLS", ROOT.parent / "shared" / "tools" / "autobahn"))


def _run_quick(tmp_path: Path, *mode: str) -> None:
    """Runs `scripts/autobahn.sh [client] quick` and checks its summary line."""
    env = dict(os.environ, AUTOBAHN_OUT=str(tmp_path / "report"), AUTOBAHN_TOOLS=str(TOOLS))
    # The tools' own bound on the whole run, below this test's.
    env.setdefault("AUTOBAHN_TIMEOUT", "480")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "autobahn.sh"), *mode, "quick"],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = dict(re.findall(r"(\w[\w-]*)=(\d+)", summary))
    assert counts, f"no Autobahn summary:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert int(counts["cases"]) >= 240, summary
    assert counts["FAILED"] == "0" and counts["UNIMPLEMENTED"] == "0", summary
    assert counts["close_not_ok"] == "0", summary
    assert done.returncode == 0, summary


def needs_tool(script: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (TOOLS / script).exists(), reason=f"the Autobahn tools are not at {TOOLS}"
    )


@pytest.mark.timeout(600)
@needs_tool("run.sh")
def test_autobahn_quick_cases_all_pass(tmp_path: Path) -> None:
    _run_quick(tmp_path)


@pytest.mark.timeout(600)
@needs_tool("run-client.sh")
def test_autobahn_client_quick_cases_all_pass(tmp_path: Path) -> None:
    _run_quick(tmp_path, "client")
