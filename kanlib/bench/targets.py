"""Goals checked against benchmark rows: each benchmark's ``target_report`` gives one entry per goal, with the
measured value (None when the rows lack it), the goal and whether it is met; ``format_targets`` prints them."""
from __future__ import annotations

import operator
from collections.abc import Sequence

__all__ = ["DIRECTIONS", "target_entry", "format_targets"]

DIRECTIONS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}


def target_entry(name: str, value: float | None, direction: str, goal: float) -> dict:
    """{"target", "value", "goal", "met"}: met is None when there is no value, else ``value <direction> goal``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {tuple(DIRECTIONS)}, got {direction!r}")
    met = None if value is None else bool(DIRECTIONS[direction](value, goal))
    return {"target": name, "value": value, "goal": f"{direction} {goal}", "met": met}


def format_targets(report: Sequence[dict], value_format: str) -> str:
    """A line per entry of a target report: its value (in value_format), goal and verdict."""
    lines = []
    for target in report:
        value = "missing" if target["value"] is None else format(target["value"], value_format)
        met = "" if target["met"] is None else (" met" if target["met"] else " NOT met")
        lines.append(f"  {target['target']}: {value} (goal {target['goal']}){met}")
    return "\n".join(lines)
