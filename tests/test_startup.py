"""Start-up cost: what a JSONL job imports before its first request."""

from __future__ import annotations

import subprocess
import sys


def test_a_job_starts_without_pyarrow_or_pandas() -> None:
    # pyarrow, numpy and the pandas pyarrow loads on first use cost ~0.3 s; a job imports
    # them in a thread while it waits on the network (job._warm_up_output), not up front.
    code = (
        "import sys, batchrun.cli, batchrun.job, batchrun.runner, batchrun.client;"
        "print(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
