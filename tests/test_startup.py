"""Start-up and memory cost: what a job imports, and when."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import prompts, write_jsonl

LOADED = "print(sorted(m for m in ('pyarrow', 'numpy', 'pandas') if m in sys.modules))"


def test_a_job_starts_without_pyarrow_or_pandas() -> None:
    # pyarrow and numpy cost ~0.13 s to import; a JSONL job imports them in a thread while it
    # waits on the network (job._warm_up_output), not before its first request.
    code = f"import sys, batchrun.cli, batchrun.job, batchrun.engine, batchrun.client; {LOADED}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_writing_the_output_never_imports_pandas(tmp_path: Path) -> None:
    # pa.array() on Python lists would import pandas (0.3 s, ~55 MiB per run): results.py
    # builds its columns with Arrow's StringBuilder and cast instead (_arrow_column).
    data = write_jsonl(tmp_path / "in.jsonl", prompts(5))
    out = tmp_path / "out.parquet"
    argv = ["batchrun", "run", str(data), "-o", str(out), "--offline"]
    code = (
        f"import sys; sys.argv = {argv!r}\n"
        "from batchrun.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"{LOADED}"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.exists(), result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['numpy', 'pyarrow']"


def test_tuned_gc_restores_the_collector_after_the_job() -> None:
    import gc

    from batchrun.job import tuned_gc

    gc.unfreeze()  # earlier in-process CLI runs froze their heap at exit (cli.run)
    before = (gc.get_threshold(), gc.get_freeze_count())
    with tuned_gc():
        assert gc.get_threshold()[0] == 50_000
        assert gc.get_freeze_count() > 0
    assert (gc.get_threshold(), gc.get_freeze_count()) == before
