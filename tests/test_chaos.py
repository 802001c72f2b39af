"""The short chaos suite (`python -m chaos --quick`) inside `make test`: every fault
scenario against real processes, every acknowledged hold checked. `make chaos` runs the
full one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.reconciler_proc import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_quick_chaos_keeps_every_promise() -> None:
    env = {**os.environ}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    run = subprocess.run([sys.executable, "-m", "chaos", "--quick", "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=580)
    assert run.stdout, run.stderr[-3000:]
    report = json.loads(run.stdout)
    ran = [s for s in report["scenarios"] if not s["skipped"]]
    assert len(ran) >= 6, report
    for s in ran:
        said = json.dumps(s)
        assert s["acknowledged"] > 0, said
        assert s["reused"] == 0 and s["oversold"] == 0, said
        assert s["audit"] == "clean", said
        if s["promise"] == "nothing acknowledged lost":
            assert s["lost"] == 0, said
    assert report["ok"] and run.returncode == 0, json.dumps(report)
