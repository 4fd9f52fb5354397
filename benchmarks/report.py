"""The results document: what each benchmark found, as Markdown (benchmarks/RESULTS.md).

Suites hand in `Section`s (a table, the targets with PASS/FAIL and the measured figure, notes);
this module only lays them out, under a header naming the machine, its load, the date and the
exact command, so every speed claim carries the conditions it was measured in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Verdict:
    target: str
    measured: str
    passed: bool | None  # None: not judged (the run itself went wrong)

    @property
    def word(self) -> str:
        return {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[self.passed]


@dataclass
class Section:
    title: str
    setup: str
    commands: list[str] = field(default_factory=list)
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load: str = ""


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render(info: dict[str, str], warnings: list[str], sections: list[Section], quick: bool) -> str:
    out = ["# batchrun benchmark results", ""]
    if quick:
        out += ["**QUICK SMOKE RUN: small sizes, not the issue's figures.**", ""]
    for warning in warnings:
        out += [f"> **WARNING: {warning}**", ""]
    out += [
        "Written by `benchmarks/bench.py`; the only place batchrun's speed claims live. The "
        "machine is shared and noisy: compare the ratios, which are measured in the same "
        "interleaved rounds, not absolute rates across runs.",
        "",
    ]
    out += table(["", ""], [[k, v] for k, v in info.items()])
    out += ["", "## Summary", ""]
    summary = [
        [s.title, v.target, v.measured, f"**{v.word}**"] for s in sections for v in s.verdicts
    ]
    out += table(["benchmark", "target", "measured", "result"], summary)
    for section in sections:
        out += ["", f"## {section.title}", "", section.setup, ""]
        if section.load:
            out += [f"Load average (1/5/15 min) before → after: {section.load}", ""]
        for command in section.commands:
            out += ["```", command, "```", ""]
        if section.rows:
            out += [*table(section.headers, section.rows), ""]
        for verdict in section.verdicts:
            out.append(f"- {verdict.target}: {verdict.measured} — **{verdict.word}**")
        if section.verdicts:
            out.append("")
        out += [f"- {note}" for note in section.notes]
    return "\n".join(out).rstrip() + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
