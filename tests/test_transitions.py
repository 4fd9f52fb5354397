"""The row lifecycle as the engine walks it: scripted scenarios through the real Engine
that together make every move of lifecycle.EDGES (collected by FakeSink, which also fails a
scenario on any move outside EDGES), and the lifecycle diagram in lifecycle.py's docstring
checked against EDGES, so the picture cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from batchrun import lifecycle
from batchrun.errors import TransportError
from batchrun.lifecycle import (
    EDGES,
    TRANSITIONS,
    Accepted,
    Fetched,
    Finished,
    Forgotten,
    Located,
    Rejected,
    RowState,
    Submitted,
    WorkItem,
)
from batchrun.media import LOCAL

from .engine_fakes import (
    Call,
    Edge,
    Handler,
    Reply,
    Script,
    accepted,
    completion_body,
    held,
    ok,
    problem,
    redirect,
    run_one,
    zip_with,
)

S = RowState
URL = "https://nvcf-results.s3.amazonaws.com/r.zip"
ARCHIVE = zip_with("r.response", completion_body())
LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string"}}}
LABELLED = completion_body('{"label": "positive"}')


def broken(call: Call) -> Reply:
    raise RuntimeError("a bug somewhere")


def missing_image() -> WorkItem:
    marker = f"{LOCAL}{'0' * 64}:image/png:/nonexistent/batchrun-test/gone.png"
    parts = [{"type": "image_url", "image_url": {"url": marker}}]
    return WorkItem(0, "row-0", messages=json.dumps([{"role": "user", "content": parts}]))


@dataclass
class Scenario:
    """A row run through the engine, and the moves it is there to show."""

    name: str
    handler: Callable[[], Handler]  # a fresh one per run (a Script is used up)
    shows: set[Edge]
    item: WorkItem | None = None
    settings: dict[str, Any] = field(default_factory=dict)


SCENARIOS = [
    Scenario(
        "200 at once",
        lambda: Script(ok()),
        {(S.PENDING, Submitted, S.INFLIGHT), (S.INFLIGHT, Finished, S.DONE)},
    ),
    Scenario(
        "500, then sent again",
        lambda: Script(problem(500, "Internal Server Error"), ok()),
        {(S.INFLIGHT, Submitted, S.INFLIGHT)},
    ),
    Scenario(
        "422",
        lambda: Script(problem(422, "Unprocessable Entity")),
        {(S.INFLIGHT, Finished, S.FAILED)},
    ),
    Scenario(
        "202, polled to its answer",
        lambda: Script(accepted("r"), ok("r")),
        {
            (S.INFLIGHT, Accepted, S.POLLING),
            (S.POLLING, Fetched, S.FETCHED),
            (S.FETCHED, Finished, S.DONE),
        },
    ),
    Scenario(
        "302 to the submission",
        lambda: Script(redirect(URL, "r"), (200, {}, ARCHIVE)),
        {(S.INFLIGHT, Located, S.FETCHED), (S.FETCHED, Fetched, S.FETCHED)},
    ),
    Scenario(
        "302 to a poll",
        lambda: Script(accepted("r"), redirect(URL, "r"), (200, {}, ARCHIVE)),
        {(S.POLLING, Located, S.FETCHED)},
    ),
    Scenario(
        "the id expired: bought again",
        lambda: Script(accepted("r"), problem(404, "Not Found", rid=None), ok()),
        {(S.POLLING, Forgotten, S.INFLIGHT)},
    ),
    Scenario(
        "the stored link is dead: bought again",
        lambda: Script((410, {}, b"<Error>expired</Error>"), ok()),
        {(S.FETCHED, Forgotten, S.INFLIGHT)},
        item=held(request_id="r", location=URL),
    ),
    Scenario(
        "polling a resumed id hits a bug",
        lambda: broken,
        {(S.POLLING, Finished, S.FAILED)},
        item=held(request_id="r"),
    ),
    Scenario(
        "downloading a stored link hits a bug",
        lambda: broken,
        {(S.FETCHED, Finished, S.FAILED)},
        item=held(request_id="r", location=URL),
    ),
    Scenario(
        "the row's image is gone",
        lambda: Script(),
        {(S.PENDING, Finished, S.FAILED)},
        item=missing_image(),
    ),
    Scenario(
        "an answer off the schema: asked again",
        lambda: Script(ok(body=completion_body('{"label": 0}')), ok(body=LABELLED)),
        {(S.INFLIGHT, Rejected, S.INFLIGHT)},
        settings={"schema": LABEL},
    ),
    Scenario(
        "a polled answer off the schema: asked again",
        lambda: Script(accepted("r"), ok("r", body=completion_body("no JSON")), ok(body=LABELLED)),
        {(S.FETCHED, Rejected, S.INFLIGHT)},
        settings={"schema": LABEL},
    ),
    Scenario(
        "a poll that keeps failing, then the answer",
        lambda: Script(accepted("r"), TransportError("dropped"), ok("r")),
        set(),
    ),
]


@functools.cache
def walk() -> dict[str, list[Edge]]:
    """Each scenario's moves, in order (FakeSink checked each against EDGES)."""
    seen: dict[str, list[Edge]] = {}
    for scenario in SCENARIOS:
        seen[scenario.name] = run(scenario)
    return seen


def run(scenario: Scenario) -> list[Edge]:
    # A copy of the item: the engine changes the WorkItem it runs.
    item = None if scenario.item is None else dataclasses.replace(scenario.item)
    h = run_one(scenario.handler(), item=item, **scenario.settings)
    return list(h.sink.edges)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_each_scenario_makes_the_moves_it_shows(scenario: Scenario) -> None:
    edges = set(run(scenario))
    assert scenario.shows <= edges
    assert edges <= EDGES


def test_scenarios_walk_every_edge() -> None:
    seen = {edge for edges in walk().values() for edge in edges}
    assert seen <= EDGES
    assert seen == EDGES, f"never walked: {sorted(map(str, EDGES - seen))}"


# ---------------------------------------------------------------- the diagram

MOVE = {t.__name__.lower(): t for t in TRANSITIONS}
ARROW = re.compile(
    r"^\s*(?P<source>[a-z]+) ──(?P<move>[a-z]+)──▶ (?P<targets>[a-z]+(?: \| [a-z]+)*)(?:\s|$)"
)


def diagram_edges(doc: str) -> set[Edge]:
    """Every move drawn in a docstring: lines like `inflight ──finished──▶ done | failed`."""
    edges: set[Edge] = set()
    for line in doc.splitlines():
        if "──▶" not in line:
            continue
        match = ARROW.match(line)
        assert match, f"a diagram line this test cannot read: {line!r}"
        kind = MOVE[match["move"]]
        for target in match["targets"].split(" | "):
            edges.add((RowState(match["source"]), kind, RowState(target)))
    return edges


def test_the_diagram_parser_reads_what_it_should() -> None:
    doc = """
        pending ──submitted──▶ inflight            (sent)
        inflight ──finished──▶ done | failed
    """
    assert diagram_edges(doc) == {
        (S.PENDING, Submitted, S.INFLIGHT),
        (S.INFLIGHT, Finished, S.DONE),
        (S.INFLIGHT, Finished, S.FAILED),
    }
    with pytest.raises(AssertionError, match="cannot read"):
        diagram_edges("    pending ──submitted──▶ In-flight")  # no silent skip
    with pytest.raises(KeyError):
        diagram_edges("    pending ──teleported──▶ done")  # not a transition
    with pytest.raises(ValueError):
        diagram_edges("    pending ──submitted──▶ nowhere")  # not a state


def test_the_lifecycle_diagram_names_exactly_the_moves_in_edges() -> None:
    assert set(MOVE) == {
        "submitted", "accepted", "fetched", "located", "forgotten", "rejected", "finished"
    }  # fmt: skip
    drawn = diagram_edges(lifecycle.__doc__ or "")
    assert drawn - EDGES == set(), "drawn but not in EDGES"
    assert EDGES - drawn == set(), "in EDGES but not drawn"
