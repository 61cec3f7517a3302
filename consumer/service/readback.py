"""Which refused instructions LaunchDarkly holds already: the read-back after an unknown outcome.

A request whose outcome was unknown (errors.py) may have been applied; its retry then finds
its own effect there, and some instructions are refused for it (a scheduled removal that
exists already, a target removed already). Such an instruction was applied, by the earlier
request: its event `succeeded`. The rule (sender.py), kept in this one function:

1. apply the whole batch, in order, to an empty picture of the resource (effects.py): the last
   instruction to set a target decides what it should hold;
2. read every target that a refused instruction sets (the reads `verify` uses);
3. a refused instruction counts as applied when every target it sets is read back at the
   value the batch leaves it at, and that value is its own, or is set by a later instruction
   of the batch that this retry applied (refused for finding its target as the earlier
   request left it). A read that fails, any other value, or a later instruction on the same
   target refused too (the read cannot tell whether either was applied) leaves it refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from consumer.contract.events import TargetingEvent
from consumer.launchdarkly.effects import Effect, Target, effects, found_in, reads

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


def deciders(events: Sequence[TargetingEvent], *, big: bool) -> dict[Target, int]:
    """Each target -> the position of the last event that sets it."""
    found: dict[Target, int] = {}
    for position, event in enumerate(events):
        for effect in effects_of(event, big=big):
            found[effect.target] = position
    return found


async def applied_already(
    read: ReadFn,
    events: Sequence[TargetingEvent],
    refused: Sequence[int],
    *,
    big: bool,
    applied: Sequence[int] = (),
) -> set[int]:
    """Rules 2-3: the positions among `refused` whose effect LaunchDarkly holds now
    (`applied`: the positions this retry applied)."""
    final = expected_after(events, big=big)
    last = deciders(events, big=big)
    done = set(applied)
    wanted: dict[int, list[Effect]] = {}
    for index in refused:
        own = effects_of(events[index], big=big)
        if own and all(
            effect.target in final and (last[effect.target] in done | {index}) for effect in own
        ):
            wanted[index] = [final[effect.target] for effect in own]
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
