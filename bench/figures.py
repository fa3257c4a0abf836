"""Looking figures up in a benchmark's results: by server, scenario, concurrency and mode.

Every result carries the mode it was measured in (``pinned``: each server on a core of its own,
the load on the other; ``unpinned``: everything left to the scheduler). A result without one
comes from a report written before there were modes, when every run was pinned.
"""

from __future__ import annotations

import statistics
from typing import Any

MODES = ("pinned", "unpinned")
OLD_MODE = "pinned"  # what a result without a mode was measured in


def mode_of(result: dict[str, Any]) -> str:
    return str(result.get("mode", OLD_MODE))


def in_mode(results: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    """The results measured in ``mode``."""
    return [r for r in results if mode_of(r) == mode]


def modes_of(report: dict[str, Any]) -> list[str]:
    """The modes a report was measured in, in the order they ran."""
    return list(report.get("modes") or [OLD_MODE])


def find(results: list[dict[str, Any]], server: str, scenario: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (r for r in results if (r["server"], r["scenario"], r["concurrency"]) == (server, scenario, concurrency)), None
    )


def paired(
    results: list[dict[str, Any]], a: tuple[str, str], b: tuple[str, str], concurrency: int, figure: str = "rps"
) -> tuple[float, list[float]] | None:
    """``figure`` of (server, scenario) ``a`` over that of ``b``: the median of the rounds' own ratios
    and their spread. Each pairs two runs of the same round, so a slow stretch of the machine
    touches both sides of a ratio rather than one of them. ``results`` are of one mode."""
    first, second = find(results, *a, concurrency), find(results, *b, concurrency)
    if not first or not second:
        return None
    pairs = [
        x[figure] / y[figure]
        for x, y in zip(first["runs"], second["runs"], strict=False)
        if y.get(figure) and figure in x
    ]
    if not pairs:
        return None
    return round(statistics.median(pairs), 3), [round(min(pairs), 3), round(max(pairs), 3)]
