"""Deterministic prompt sets: the same rows, byte for byte, on every machine and every run.

Row i has id `r{i:07d}` and a prompt of 6 to 40 words drawn from a small vocabulary by a
generator seeded with i, so a set of n rows is a prefix of every larger set and a checker can
rebuild any row without reading the file. Files are written once per size and reused.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

_WORDS = (
    "the a of to and in is that for it as with was on be by this are or from at an which "
    "summarise explain translate classify label answer question dataset model token prompt "
    "batch request result latency river mountain city energy market protein theorem music "
    "history budget weather garden engine signal network language number"
)
VOCABULARY = _WORDS.split()


def row_id(i: int) -> str:
    return f"r{i:07d}"


def prompt(i: int) -> str:
    rng = random.Random(i)
    words = rng.choices(VOCABULARY, k=rng.randint(5, 39))
    return f"Row {i}: " + " ".join(words) + "?"


def prompt_set(folder: Path, rows: int) -> Path:
    """The JSONL file of the first `rows` rows (written if missing or incomplete)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"prompts-{rows}.jsonl"
    done = path.with_suffix(".complete")
    if path.exists() and done.exists():
        return path
    partial = path.with_suffix(".partial")
    with partial.open("w") as fh:
        for i in range(rows):
            fh.write(json.dumps({"id": row_id(i), "prompt": prompt(i)}) + "\n")
    partial.replace(path)
    done.write_text(f"{rows}\n")
    return path


_GOOD = ("The battery lasts two full days", "Sturdy, light and it looks great",
         "Arrived early and works perfectly", "Exactly as described")  # fmt: skip
_BAD = ("Stopped working after a week", "Support never answered my emails",
        "The zip broke on the first trip", "Cheap plastic that cracked")  # fmt: skip
_MIXED = ("Decent for the price", "Fine, though the colour is off",
          "Does the job, nothing more", "Okay once you get used to it")  # fmt: skip
_TAILS = ("and I would buy it again.", "but shipping took far too long.",
          "which is about what I expected.", "so I gave it to my brother.",
          "and the box was damaged.")  # fmt: skip
_PRODUCTS = ("headphones", "mug", "jacket", "lamp", "backpack", "kettle", "phone case",
             "desk chair")  # fmt: skip


def review(i: int) -> dict[str, object]:
    """Row i of the review set: a short product review, about 210 bytes as a JSONL line."""
    rng = random.Random(i)
    label, pool = rng.choice((("positive", _GOOD), ("negative", _BAD), ("neutral", _MIXED)))
    tail = rng.choice(_TAILS)
    text = (
        f"{rng.choice(pool)}; {rng.choice(pool).lower()} {tail} {rng.choice(_TAILS).capitalize()}"
    )
    return {
        "id": f"rev-{i:06d}",
        "review": text,
        "product": rng.choice(_PRODUCTS),
        "expected": label,
        "stars": rng.randint(1, 5),
    }


def review_set(folder: Path, rows: int) -> Path:
    """The JSONL file of the first `rows` reviews (written if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"reviews-{rows}.jsonl"
    if not path.exists():
        partial = path.with_suffix(".partial")
        with partial.open("w") as fh:
            for i in range(rows):
                fh.write(json.dumps(review(i)) + "\n")
        partial.replace(path)
    return path
