"""Invariant 2: a lane held for scarcity is cut no later than CONSUMER_BATCH_MAX_WAIT_MS.

The dispatch used to add the group jitter (uniform 0..JITTER_MS = 100 ms) to whatever held a
lane, so a scarcity hold ending exactly at the maximum wait ended up to 100 ms after it. Only
the limiter's waits are jittered (members of a group should not wake in step at a reset); a
hold's own deadline is kept as it is."""

from __future__ import annotations

from consumer.service.batcher import Batcher
from consumer.service.pipeline import _Admission
from consumer.service.scarcity import Scarcity
from tests.factories import event_dict, pending
from tests.unit.test_admission_spare_budget import Units


def test_a_hold_is_waited_for_without_jitter_and_ends_at_the_maximum_wait() -> None:
    batcher = Batcher(max_size=50, linger=0.05)
    batcher.add(pending(event_dict(key="s1")), 0.0)
    batcher.add(pending(event_dict(key="s2")), 0.0)
    now = 0.1  # due; two lanes, one unit left: scarce; the route took an event 0.1 s ago
    admission = _Admission(Units(1), {}, now, batcher.heads(now), Scarcity(max_wait=0.5))  # type: ignore[arg-type]
    assert batcher.ready(now, 16, admission.admit) == []
    assert admission.wait is not None and not admission.jitter
    assert admission.wait == 0.4  # the maximum wait, less what the oldest event waited


def test_the_limiters_wait_is_jittered() -> None:
    batcher = Batcher(max_size=50, linger=0.05)
    batcher.add(pending(event_dict(key="s1")), 0.0)
    admission = _Admission(Units(0), {}, 0.1, batcher.heads(0.1), Scarcity(max_wait=0.5))  # type: ignore[arg-type]
    assert batcher.ready(0.1, 16, admission.admit) == []
    assert admission.wait == 5.0 and admission.jitter
