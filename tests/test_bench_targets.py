"""kanlib.bench.targets: goals checked against measured values and printed one line each."""
import pytest

from kanlib.bench.targets import format_targets, target_entry


@pytest.mark.parametrize("value,direction,goal,met", [
    (1.2, "<=", 1.3, True), (1.3, "<=", 1.3, True), (1.4, "<=", 1.3, False),
    (5.0, ">=", 5.0, True), (4.9, ">=", 5.0, False), (1.0, ">", 1.0, False), (None, "<=", 1.3, None),
])
def test_target_entry(value, direction, goal, met):
    entry = target_entry("ratio", value, direction, goal)
    assert entry == {"target": "ratio", "value": value, "goal": f"{direction} {goal}", "met": met}


def test_bad_direction_is_named():
    with pytest.raises(ValueError, match=r"direction must be one of .*got '=='"):
        target_entry("ratio", 1.0, "==", 1.0)


def test_format_targets_says_met_missing_and_not_met():
    text = format_targets([target_entry("a", 1.25, "<=", 1.3), target_entry("b", None, ">=", 5.0),
                           target_entry("c", 2.0, "<=", 1.3)], ".2f")
    assert text.splitlines() == ["  a: 1.25 (goal <= 1.3) met", "  b: missing (goal >= 5.0)",
                                 "  c: 2.00 (goal <= 1.3) NOT met"]
