"""Whether this member still belongs to the consumer group as it last knew it. Pure; the clock
is passed in.

The group coordinator expels a member it has not heard from for KAFKA_SESSION_TIMEOUT_MS and
gives its partitions to others at once. A member frozen that long (SIGSTOP, a long GC or VM
pause) or cut off from the coordinator does not know it until aiokafka rejoins, and in the
meantime its batches would still be sent, overtaking the new owner's (leases.py, rule 4).

The rule (rule 4 applied by the member itself, before any rejoin):

1. the membership is *heard* when a heartbeat is answered and when an assignment is received;
2. it is *current* while it was heard less than its bound ago (the session timeout less one
   heartbeat interval: the coordinator counts from the last heartbeat it received, which is
   before the answer that we count from) and it was not *lost*;
3. it is *lost* when the coordinator says the member id or generation is unknown;
4. no request starts, and no record is taken, while the membership is not current
   (`Lease.active` asks it right before each request); the owner then asks aiokafka to rejoin,
   so that the revoke and the next assignment hand the work to whoever owns it now;
5. once found not current, it stays so until the next assignment (`assigned`): a heartbeat
   answered meanwhile does not make it current again, since batches stopped during the lapse
   left records without an outcome that only the revoke and a fresh lease send again.
"""

from __future__ import annotations

from collections.abc import Callable


class Membership:
    __slots__ = ("_bound", "_clock", "_heard", "_lapsed", "_lost", "rejoin_asked")

    def __init__(self, bound: float, clock: Callable[[], float]) -> None:
        self._bound = bound
        self._clock = clock
        self._heard = clock()
        self._lost = False
        self._lapsed = False  # found not current since the last assignment (rule 5)
        self.rejoin_asked = False  # the owner asked aiokafka to rejoin since it lapsed

    def heard(self) -> None:
        """A heartbeat was answered (rule 1)."""
        self._heard = self._clock()

    def assigned(self) -> None:
        """An assignment was received: heard, and a lapse is over (rules 1, 5)."""
        self._heard = self._clock()
        self._lost = self._lapsed = False
        self.rejoin_asked = False

    def lost(self) -> None:
        """The coordinator no longer knows this member id or generation (rule 3)."""
        self._lost = True

    def current(self) -> bool:
        """Rules 2 and 5."""
        if not self._lapsed and (self._lost or self._clock() - self._heard >= self._bound):
            self._lapsed = True
        return not self._lapsed

    def silent_for(self) -> float:
        return self._clock() - self._heard


def bound(session_timeout_ms: int, heartbeat_interval_ms: int) -> float:
    """How long a membership stays current without news (rule 2), in seconds: the session less
    one heartbeat interval, never less than half the session."""
    session = session_timeout_ms / 1000
    return max(session / 2, session - heartbeat_interval_ms / 1000)
