"""The quick part of the Autobahn|Testsuite (cases 1-7 and 10, about 250 cases) against
examples/websocket_echo.py: no case may fail or be unimplemented. The whole suite (517
cases, compression included) is `scripts/autobahn.sh`; it takes about 10 minutes."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("AUTOBAHN_TOOLS", ROOT.parent / "shared" / "tools" / "autobahn"))


@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not (TOOLS / "run.sh").exists(), reason=f"the Autobahn tools are not at {TOOLS}"
)
def test_autobahn_quick_cases_all_pass(tmp_path: Path) -> None:
    env = dict(os.environ, AUTOBAHN_OUT=str(tmp_path / "report"), AUTOBAHN_TOOLS=str(TOOLS))
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "autobahn.sh"), "quick"],
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
