"""The mock endpoint's judge mode: verdicts for a sweep's judge grader, decided by the prompt.

A prompt with an `<answer>...</answer>` block and an `<expected>...</expected>` block is a
judge's (batchrun's default rubric is written that way). The reply is one sentence, then a
last line `VERDICT: PASS` when the expected text occurs in the answer (both case-folded,
whitespace collapsed), else `VERDICT: FAIL`.

Tests decide a verdict with a marker anywhere in the prompt (in a dataset's question, which
the mock's answer repeats, or in its expected value):

- `[verdict:pass]`, `[verdict:fail]`: that verdict, whatever the texts say;
- `[verdict:none]`: a reply without a verdict line (the grader cannot read one);
- `[verdict:pass,fail,fail]`: one entry per judge. Judge k of a grader with `judges = N`
  sends `seed = k` (0, 1, ...): it gets entry k (cycling), so N judges can disagree and
  the majority is known in advance, whatever order the requests arrive in.
"""

from __future__ import annotations

import re
from typing import Any

BLOCK = re.compile(r"<(answer|expected)>\s*(.*?)\s*</\1>", re.DOTALL)
VERDICTS = re.compile(r"\[verdict:((?:pass|fail|none)(?:,(?:pass|fail|none))*)\]")


def is_judge_prompt(prompt: str) -> bool:
    blocks = {name for name, _ in BLOCK.findall(prompt)}
    return blocks == {"answer", "expected"}


def judge_reply(prompt: str, body: dict[str, Any]) -> str:
    """What the mock judge says about the prompt's answer."""
    verdict = _forced(prompt, body)
    if verdict is None:
        blocks = dict(BLOCK.findall(prompt))
        agrees = _norm(blocks["expected"]) in _norm(blocks["answer"])
        verdict = "pass" if agrees else "fail"
        reason = "contains" if agrees else "does not contain"
        why = f"The answer {reason} the expected text."
    else:
        why = f"Told to say {verdict} by the prompt's marker."
    if verdict == "none":
        return "I cannot tell whether this answer is right."
    return f"{why}\nVERDICT: {verdict.upper()}"


def _forced(prompt: str, body: dict[str, Any]) -> str | None:
    found = VERDICTS.search(prompt)
    if found is None:
        return None
    choices = found.group(1).split(",")
    seed = body.get("seed")
    judge = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    return choices[judge % len(choices)]


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()
