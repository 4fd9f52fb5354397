"""A judge grader at work on one cell: its requests are an ordinary batchrun job.

For every answered row, each of the grader's N judges gets the rubric filled with the
row's question, answer and expected value. Those prompts are written to
`<cell>/judge-<grader>/requests.jsonl` (one row per row and judge, id `<row id>~judge<k>`)
and run as a job with the judge's settings, output `results.parquet` beside it: rate
limited, checkpointed and resumable like any job, so running the sweep again buys no
verdict twice, and its tokens and cost are the judge job's own, reported apart from the
answers'.

With N > 1 judge k's request carries `seed = k` (added to a `seed` the judge's params set):
N requests that differ, so an endpoint samples N verdicts (and a reuse of stored answers
keeps them apart) instead of answering one request N times. Use a temperature above 0.

Each judge's reply is read with the grader's `verdict_pattern` (the last match: judges
reason first, conclude last); its group's word says pass (pass, yes, true, correct, right,
1) or fail (fail, no, false, incorrect, wrong, 0). A row passes when more than half of the
judges that gave a verdict say pass (a tie fails); with no verdict at all, from a reply
without one or a judge request that failed, the row is a grading error, counted.

When the answers change (the cell was resumed with more rows done) or the judge settings
do, the judge job is another job: its previous answers are exported and the job starts
over reusing them, so identical requests are still not bought again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import AuthError, BatchrunError, Interrupted, RunMismatchError
from .grader_spec import GraderSpec
from .graders import SKIPPED, Answer, Grade, GradeState, error, expected_value, failed
from .job import JobResult, run_job_async
from .judge_config import FAIL_WORDS, PASS_WORDS, JudgeSpec
from .limits import RateLimiter
from .templates import TemplateProblem

log = logging.getLogger(__name__)


@dataclass
class JudgeUsage:
    """What a cell's judges cost, apart from its answers."""

    requests: int = 0  # judge rows in the judge jobs
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # USD, when a judge has [pricing]

    def add(self, result: JobResult) -> None:
        self.requests += sum(result.counts.values())
        self.prompt_tokens += result.totals.prompt_tokens
        self.completion_tokens += result.totals.completion_tokens
        if result.cost is not None:
            self.cost = (self.cost or 0.0) + result.cost


@dataclass(frozen=True)
class JudgeRequest:
    """One judge's look at one row."""

    row_id: str
    judge: int
    prompt: str


async def judge_cell(
    spec: GraderSpec,
    answers: list[Answer],
    folder: Path,
    questions: Callable[[], Mapping[str, str]],
    limiter: RateLimiter | None,
    usage: JudgeUsage,
) -> list[Grade]:
    """Every row's grade by the judge grader `spec`; the judge job runs under `folder`.
    `questions` gives each input row's question by row id (read only if the rubric asks)."""
    judge = spec.judge
    assert judge is not None
    asked = questions() if judge.uses("question") else {}
    grades: dict[str, Grade] = {}
    requests: list[JudgeRequest] = []
    for answer in answers:
        ready = _before_judging(spec, judge, answer, asked, requests)
        if ready is not None:
            grades[answer.id] = ready
    if requests:
        replies = await _ask(judge, requests, folder, limiter, usage)
        for row_id, verdicts in _verdicts(judge, requests, replies).items():
            grades[row_id] = majority(verdicts)
    return [grades[a.id] for a in answers]


def _before_judging(
    spec: GraderSpec,
    judge: JudgeSpec,
    answer: Answer,
    questions: Mapping[str, str],
    requests: list[JudgeRequest],
) -> Grade | None:
    """The row's grade when no judge need be asked; else its judges' requests are added."""
    expected = expected_value(spec, answer)
    if expected is None and spec.needs_expected():
        return SKIPPED
    if not answer.ok:
        return failed(f"no answer (row {answer.status})")
    if not answer.content:
        return failed("empty answer")
    values = {"answer": answer.content, "expected": _text(expected)}
    if judge.uses("question"):
        values["question"] = questions.get(answer.item_id, questions.get(answer.id))
    try:
        prompt = judge.rubric.fill(values, "the rubric")
    except TemplateProblem as exc:
        return error(f"judge: {exc}")
    requests += [JudgeRequest(answer.id, k, prompt) for k in range(judge.judges)]
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


async def _ask(
    judge: JudgeSpec,
    requests: list[JudgeRequest],
    folder: Path,
    limiter: RateLimiter | None,
    usage: JudgeUsage,
) -> dict[str, tuple[str, str | None, str | None]]:
    """Run the judge job; every judge row's (status, reply, error) by its id."""
    inputs = folder / "requests.jsonl"
    await asyncio.to_thread(_write_if_changed, inputs, _request_lines(judge, requests))
    cfg = replace(judge.cfg, inputs=(str(inputs),), output=str(folder / "results.parquet"))
    try:
        result = await _run(cfg, limiter)
    except (AuthError, Interrupted):
        raise  # the sweep stops, as for a cell: the same for every judge, or the user asked
    except BatchrunError as exc:
        return {_judge_id(r): ("failed", None, f"judge job: {exc}") for r in requests}
    usage.add(result)
    if isinstance(result.stopped, AuthError | Interrupted):
        raise result.stopped
    return _replies(result.output)


async def _run(cfg: RunConfig, limiter: RateLimiter | None) -> JobResult:
    try:
        return await run_job_async(cfg, limiter=limiter)
    except RunMismatchError as exc:
        # Other answers to judge, or other judge settings: start over, reusing every
        # verdict whose request did not change (exported: the checkpoint may be mid-run).
        from .destination import export

        previous = Path(cfg.output).with_name("previous.parquet")
        log.info("judge job %s changed (%s): starting over, reusing its answers", cfg.output, exc)
        export(cfg.checkpoint_path, str(previous), "parquet", one_file=True)
        return await run_job_async(replace(cfg, fresh=True, reuse=str(previous)), limiter=limiter)


def _request_lines(judge: JudgeSpec, requests: list[JudgeRequest]) -> str:
    base = judge.cfg.params.get("seed")
    base = base if isinstance(base, int) and not isinstance(base, bool) else 0
    lines = []
    for r in requests:
        row: dict[str, Any] = {
            "id": _judge_id(r),
            "prompt": r.prompt,
            "graded_id": r.row_id,
            "judge": r.judge,
        }
        if judge.judges > 1:
            row["params"] = {"seed": base + r.judge}
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def _judge_id(request: JudgeRequest) -> str:
    return f"{request.row_id}~judge{request.judge}"


def _write_if_changed(path: Path, text: str) -> None:
    """The same requests leave the file alone (its digest, and so the job, unchanged)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _replies(output: str) -> dict[str, tuple[str, str | None, str | None]]:
    import pyarrow.parquet as pq

    table = pq.read_table(output, columns=["id", "status", "content", "error"]).to_pydict()
    return {
        row_id: (status, content, err)
        for row_id, status, content, err in zip(
            table["id"], table["status"], table["content"], table["error"], strict=True
        )
    }


def _verdicts(
    judge: JudgeSpec,
    requests: list[JudgeRequest],
    replies: Mapping[str, tuple[str, str | None, str | None]],
) -> dict[str, list[bool | str]]:
    """Per row, each judge's verdict (True pass, False fail) or why it has none (a str)."""
    out: dict[str, list[bool | str]] = {}
    for request in requests:
        status, content, err = replies.get(_judge_id(request), ("pending", None, None))
        if status != "ok":
            verdict: bool | str = f"judge request {status}" + (f": {err}" if err else "")
        else:
            verdict = read_verdict(judge, content)
        out.setdefault(request.row_id, []).append(verdict)
    return out


def read_verdict(judge: JudgeSpec, reply: str | None) -> bool | str:
    """True (pass) or False (fail) from a judge's reply; a str says why there is none."""
    matches = list(judge.verdict.finditer(reply or ""))
    if not matches:
        return f"no verdict in the judge's reply ({_quoted(reply)})"
    word = (matches[-1].group(1) or "").strip().casefold()
    if word in PASS_WORDS:
        return True
    if word in FAIL_WORDS:
        return False
    return f"verdict {word!r} is neither pass nor fail"


def majority(verdicts: list[bool | str]) -> Grade:
    """More than half of the verdicts given say pass: PASS (a tie fails)."""
    given = [v for v in verdicts if isinstance(v, bool)]
    missing = [v for v in verdicts if isinstance(v, str)]
    if not given:
        return error(f"judge: {missing[0]}" if missing else "judge: no verdict")
    passes = sum(given)
    note = f"{passes} of {len(given)} judges say pass"
    if missing:
        note += f"; {len(missing)} gave none ({missing[0]})"
    return Grade(GradeState.PASS if 2 * passes > len(given) else GradeState.FAIL, note)


def _quoted(text: str | None) -> str:
    if not text:
        return "empty"
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= 60 else flat[:57] + "...")
