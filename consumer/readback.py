"""Which refused instructions LaunchDarkly holds already: the read-back after an unknown outcome.

A request whose outcome was unknown (errors.py) may have been applied; its retry then finds
its own effect there, and some instructions are refused for it (a scheduled removal that
exists already, a target removed already). Such an instruction was applied, by the earlier
request: its event `succeeded`. The rule (sender.py), kept in this one function:

1. apply the whole batch, in order, to an empty picture of the resource (effects.py): the last
   instruction to set a target decides what it should hold;
2. read every target that a refused instruction sets (the reads `verify` uses);
3. a refused instruction counts as applied when it is the one that decides each of its
   targets (no later instruction of the batch changes it) and every such target is read back
   at the value it sets. A read that fails, any other value, or a later instruction of the
   batch on the same target (the read cannot tell whether this one was applied) leaves it
   refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from consumer.effects import Effect, Target, effects, found_in, reads
from consumer.events import TargetingEvent

# (path, rate-limit route) -> (status, body), or None when the read failed.
ReadFn = Callable[[str, str], Awaitable[tuple[int, Any] | None]]


def resource_of(event: TargetingEvent) -> str:
    """The resource as effects.py names it: project/environment/kind/key."""
    return f"{event.projectKey}/{event.environmentKey}/{event.resource.kind}/{event.resource.key}"


def expected_after(events: Sequence[TargetingEvent], *, big: bool) -> dict[Target, Effect]:
    """Rule 1: each target's last effect when the events are applied in order."""
    state: dict[Target, Effect] = {}
    for event in events:
        for effect in effects_of(event, big=big):
            state[effect.target] = effect
            for cleared in effect.clears:
                state.pop(cleared, None)
    return state


def effects_of(event: TargetingEvent, *, big: bool) -> list[Effect]:
    return effects(resource_of(event), event.instruction, big=big)


async def applied_already(
    read: ReadFn, events: Sequence[TargetingEvent], refused: Sequence[int], *, big: bool
) -> set[int]:
    """Rules 2-3: the positions among `refused` whose effect LaunchDarkly holds now."""
    final = expected_after(events, big=big)
    wanted: dict[int, list[Effect]] = {}
    for index in refused:
        own = effects_of(events[index], big=big)
        if own and all(final.get(effect.target) == effect for effect in own):
            wanted[index] = own
    if not wanted:
        return set()
    targets = {effect.target: effect for effects in wanted.values() for effect in effects}
    found: dict[Target, Any] = {}
    for planned in reads(targets.values()):
        answer = await read(planned.path, f"readback-{planned.kind}")
        if answer is not None:
            found.update(found_in(planned, *answer))
    return {
        index
        for index, effects in wanted.items()
        if all(
            effect.target in found and found[effect.target] == effect.value for effect in effects
        )
    }
