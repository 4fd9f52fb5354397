"""A cell's answers graded: every grader over the cell's output, the per-row grades kept in
`<cell>/grades.parquet` (so a later sweep compares with them without grading again), and
each grader's score with its statistics (scoring.py).

The output is read once, with only the columns the graders need. When it has repeats
(`item_id` and `repeat` columns, from `repeats = N`), rows are grouped by item for the
standard error and pass@k; without them every row is its own item.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .config import RunConfig
from .grade_records import GraderScore, RowGrade
from .grader_spec import GraderKind, GraderSpec
from .graders import Answer, Grade, GradeState, RowGrader
from .judge import JudgeUsage, judge_cell
from .limits import RateLimiter
from .scoring import score_stats

GRADES_FILE = "grades.parquet"
_GRADE_FIELDS: list[pa.Field[Any]] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("item_id", pa.string(), nullable=False),
    pa.field("repeat", pa.int64(), nullable=False),
    pa.field("grader", pa.string(), nullable=False),
    pa.field("grader_key", pa.string()),
    pa.field("state", pa.string(), nullable=False),
    pa.field("score", pa.float64()),
    pa.field("note", pa.string()),
]
GRADES_SCHEMA = pa.schema(_GRADE_FIELDS)
BASE_COLUMNS = ("id", "status", "content", "item_id", "repeat")


# ---------------------------------------------------------------- reading answers


def read_answers(output: str | Path, graders: Sequence[GraderSpec]) -> list[Answer]:
    """The output's rows as graders see them (a folder of parts reads as one table)."""
    names = set(pq.read_schema(_first_file(Path(output))).names)
    wanted = {c for g in graders for c in g.columns()} | {"parsed"}
    columns = [c for c in (*BASE_COLUMNS, *sorted(wanted - set(BASE_COLUMNS))) if c in names]
    data = pq.read_table(output, columns=columns).to_pydict()
    n = len(data["id"])
    extra = [c for c in columns if c not in BASE_COLUMNS]
    repeats = "item_id" in data and "repeat" in data
    return [
        Answer(
            id=str(data["id"][i]),
            item_id=str(data["item_id"][i]) if repeats else str(data["id"][i]),
            repeat=int(data["repeat"][i] or 0) if repeats else 0,
            status=str(data["status"][i]),
            content=data["content"][i] if "content" in data else None,
            values={c: data[c][i] for c in extra},
        )
        for i in range(n)
    ]


def _first_file(output: Path) -> Path:
    if output.is_dir():  # partitioned output
        parts = sorted(output.glob("part-*.parquet"))
        if parts:
            return parts[0]
    return output


# ---------------------------------------------------------------- grading


async def grade_cell(
    graders: Sequence[GraderSpec],
    answers: list[Answer],
    folder: Path,
    questions: Callable[[], Mapping[str, str]],
    limiters: Mapping[str, RateLimiter | None],
    usage: JudgeUsage,
) -> list[RowGrade]:
    """Every grader's grade of every row. Judges run as jobs under `folder/judge-<name>`,
    rate-limited by `limiters[name]`; their tokens and cost go into `usage`."""
    out: list[RowGrade] = []
    for spec in graders:
        if spec.kind is GraderKind.JUDGE:
            grades = await judge_cell(
                spec,
                answers,
                folder / f"judge-{spec.name}",
                questions,
                limiters.get(spec.name),
                usage,
            )
        else:
            grader = RowGrader(spec)
            grades = [grader.grade(a) for a in answers]
        out += _rows(spec, answers, grades)
    return out


def grade_offline(graders: Sequence[GraderSpec], answers: list[Answer]) -> list[RowGrade]:
    """Grades by every grader that needs no model (a baseline written before grades were
    kept is graded again this way; its judge grades cannot be had without buying them)."""
    out: list[RowGrade] = []
    for spec in graders:
        if spec.kind is not GraderKind.JUDGE:
            grader = RowGrader(spec)
            out += _rows(spec, answers, [grader.grade(a) for a in answers])
    return out


def _rows(spec: GraderSpec, answers: list[Answer], grades: list[Grade]) -> list[RowGrade]:
    return [
        RowGrade(a.id, a.item_id, a.repeat, spec.name, spec.key, g.state, g.note)
        for a, g in zip(answers, grades, strict=True)
    ]


# ---------------------------------------------------------------- grades.parquet


def write_grades(path: Path, grades: Sequence[RowGrade]) -> None:
    """grades.parquet, atomically (temp file + rename)."""
    columns: dict[str, list[Any]] = {name: [] for name in GRADES_SCHEMA.names}
    for g in grades:
        for name, value in (
            ("id", g.id), ("item_id", g.item_id), ("repeat", g.repeat), ("grader", g.grader),
            ("grader_key", g.grader_key), ("state", g.state.value), ("score", g.score),
            ("note", g.note),
        ):  # fmt: skip
            columns[name].append(value)
    table = pa.table(columns, schema=GRADES_SCHEMA)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_grades(path: Path) -> list[RowGrade]:
    data = pq.read_table(path).to_pydict()
    return [
        RowGrade(
            id=data["id"][i],
            item_id=data["item_id"][i],
            repeat=data["repeat"][i],
            grader=data["grader"][i],
            grader_key=data["grader_key"][i] or "",
            state=GradeState(data["state"][i]),
            note=data["note"][i],
        )
        for i in range(len(data["id"]))
    ]


# ---------------------------------------------------------------- scores


def grader_scores(
    cell: str, graders: Sequence[GraderSpec], grades: Iterable[RowGrade], pass_at: Sequence[int]
) -> list[GraderScore]:
    """Each grader's score and statistics over the cell's grades."""
    by_grader = split_by_grader(grades)
    return [
        score_of(
            cell,
            spec.name,
            spec.kind.value,
            spec.key,
            by_grader.get(spec.name, []),
            pass_at,
            spec.min_score,
        )
        for spec in graders
    ]


def split_by_grader(grades: Iterable[RowGrade]) -> dict[str, list[RowGrade]]:
    out: dict[str, list[RowGrade]] = {}
    for g in grades:
        out.setdefault(g.grader, []).append(g)
    return out


def score_of(
    cell: str,
    grader: str,
    kind: str,
    key: str,
    grades: Sequence[RowGrade],
    pass_at: Sequence[int],
    min_score: float | None = None,
) -> GraderScore:
    counted = [(g.item_id, v) for g in grades if (v := g.counted) is not None]
    stats = score_stats(counted, pass_at)
    states = [g.state for g in grades]
    errors = [g for g in grades if g.state is GradeState.ERROR]
    return GraderScore(
        cell=cell,
        grader=grader,
        kind=kind,
        grader_key=key,
        score=stats.mean,
        stderr=stats.stderr,
        rows=stats.rows,
        passed=states.count(GradeState.PASS),
        failed=states.count(GradeState.FAIL),
        errors=len(errors),
        skipped=states.count(GradeState.SKIPPED),
        items=stats.items,
        repeats=stats.repeats,
        pass_at=stats.pass_at,
        min_score=min_score,
        first_error=errors[0].note if errors else None,
    )


# ---------------------------------------------------------------- questions


def read_questions(cfg: RunConfig) -> dict[str, str]:
    """Each input row's question (its last user message, as sent: the prompt template
    filled), by row id: what a judge's rubric shows as {question}."""
    from .dataset import expand_inputs, read_rows
    from .intake import prompt_template
    from .payloads import prepare_row

    template = prompt_template(cfg)
    questions: dict[str, str] = {}
    for source in read_rows(expand_inputs(list(cfg.inputs), cfg.endpoint_url)):
        row = prepare_row(source, template)
        if row.messages is not None:
            questions[row.row_id] = last_user_text(json.loads(row.messages))
    return questions


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message (text parts joined)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return " ".join(
                    str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
                )
            return str(content or "")
    return ""
