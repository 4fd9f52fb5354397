"""What a job is, for its checkpoint: the fingerprint of its inputs and request settings
(RunConfig.identity), whether a checkpoint's recorded identity is this job's, and what
changed between two, as a mismatch message shows it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def fingerprint(identity: Mapping[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# Identity keys of earlier releases that no longer make a job another job.
RETIRED_IDENTITY_KEYS = ("limit", "base_url")
# Keys left out of an identity at their default (so that older jobs keep their fingerprint),
# with that default, for messages: `repeats: 1 -> 4`, not `(none) -> 4`.
IMPLIED = {"repeats": 1}


def same_job(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's recorded identity is this job's (retired keys aside)."""
    kept = {k: v for k, v in old.items() if k not in RETIRED_IDENTITY_KEYS}
    return fingerprint(kept) == fingerprint(new)


def identity_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two identities, with the old and new values:
    ['body.temperature: 0.6 -> 0.1', 'inputs: the content of in.jsonl changed']."""
    changed: list[str] = []
    for key in sorted((set(old) | set(new)) - set(RETIRED_IDENTITY_KEYS)):
        a, b = old.get(key, IMPLIED.get(key)), new.get(key, IMPLIED.get(key))
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed += [
                f"{key}.{k}: {_shown(a.get(k))} -> {_shown(b.get(k))}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif key == "inputs":
            changed.append(_inputs_change(a or [], b or []))
        else:
            changed.append(f"{key}: {_shown(a)} -> {_shown(b)}")
    return changed


def _shown(value: Any) -> str:
    """A value as a message shows it (long ones cut)."""
    if value is None:
        return "(none)"
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _inputs_change(old: list[str], new: list[str]) -> str:
    if len(old) != len(new):
        return f"inputs: {_files(len(old))} -> {_files(len(new))}"
    which = [str(i + 1) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
    return f"inputs: the content of input file {', '.join(which)} (of {len(new)}) changed"
