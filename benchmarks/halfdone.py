"""A partly done checkpoint of N rows, made with batchrun's own parts and no HTTP: the inputs
read as `batchrun run` reads them (the same settings, so the same fingerprint), then the first
rows finished as the engine records answers (the fixed endpoint's answer, so the output of a
resumed run checks out). What an interrupted run leaves, without the hour of sending it took.
"""

from __future__ import annotations

import time
from pathlib import Path

from batchrun.checkpoint import CheckpointWriter
from batchrun.config import build_config
from batchrun.dataset import expand_inputs
from batchrun.intake import open_checkpoint
from batchrun.lifecycle import Finished, Outcome, RowState
from batchrun.records import Completion

from .clients import FIXED_CONTENT

CHUNK = 50_000


def settings(prompts: Path, out: Path, base_url: str) -> dict[str, object]:
    """What clients.batchrun_command(prompts, out, base_url, *FAST_OPTIONS) asks for."""
    return {
        "inputs": [str(prompts)],
        "output": str(out),
        "base_url": base_url,
        "thinking": False,
        "concurrency": 64,
        "rpm": 0,
        "max_pending": 256,
        "progress": False,
        "fresh": True,
    }


def make_half_done(prompts: Path, out: Path, base_url: str, done: int) -> float:
    """Write the checkpoint beside `out`, its first `done` rows finished; returns seconds."""
    started = time.monotonic()
    cfg = build_config(cli_values=settings(prompts, out, base_url))
    checkpoint, _ = open_checkpoint(cfg, expand_inputs(cfg.inputs))
    checkpoint.close()
    writer = CheckpointWriter(cfg.checkpoint_path)
    now = time.time()
    answer = Completion(
        content=FIXED_CONTENT,
        finish_reason="stop",
        prompt_tokens=12,
        completion_tokens=6,
        total_tokens=18,
        model="fixed",
    )
    outcome = Outcome(RowState.DONE, answer, status_code=200, latency_s=0.01)
    try:
        for start in range(0, done, CHUNK):
            end = min(done, start + CHUNK)
            writer.apply([Finished(i, outcome, 1, now, now) for i in range(start, end)])
            writer.flush()
    finally:
        writer.close()
    return time.monotonic() - started
