"""The churn checks' own check: a lost or reordered change is visible in the final state."""

from consumer.simulator import chains


def _state(values: dict[chains.Target, int]) -> dict[str, object]:
    segments: dict[str, list[dict[str, object]]] = {}
    for target, step in values.items():
        segments.setdefault(target.segment, []).append(
            {"contextKey": target.user, "expirationDate": chains.BASE_VALUE + step}
        )
    return {"segments": [{"key": k, "expiringTargets": v} for k, v in segments.items()]}


def test_stale_names_targets_not_at_their_last_step() -> None:
    a, b, c = chains.targets(segments=1, per_segment=3)
    expected = {a: 5, b: 5, c: 2}
    assert chains.stale(_state(expected), expected) == {}
    assert chains.stale(_state({a: 5, b: 4}), expected) == {b: 4, c: None}


def test_rounds_keep_each_targets_steps_rising() -> None:
    found = chains.targets(segments=2, per_segment=2)
    steps: dict[chains.Target, list[int]] = {}
    for target, step, key, event in chains.rounds(found, 0, 3):
        steps.setdefault(target, []).append(step)
        assert key.decode().endswith(f"/segment/{target.segment}")
        assert event["instruction"]["value"] == chains.BASE_VALUE + step
    assert all(s == [0, 1, 2, 3] for s in steps.values())
