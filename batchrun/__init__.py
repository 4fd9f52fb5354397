"""batchrun: run prompt datasets through OpenAI-compatible chat endpoints, resumably."""

from __future__ import annotations

from functools import cache

__all__ = ["__version__"]


@cache
def _version() -> str:
    # importlib.metadata is slow to import (benchmarks/RESULTS.md, "Hot-path choices"): only
    # pay for it when the version is asked for.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batchrun")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return _version()
    raise AttributeError(name)
