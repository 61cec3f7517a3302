"""What the last owner of a partition leaves its next owner: a mark in the committed offset's
metadata. Pure, no I/O.

A member that gives a partition up cleanly (a revoke or a stop that waited out every request
it had on the wire, and every request whose outcome was unknown) can say that nothing of its
own for that partition can still land. A member that crashed, froze past its session or lost
the group cannot: a request it started shortly before may still be applied by LaunchDarkly
after the next owner has sent a later change for the same resource. So:

1. a member commits `LIVE` at a partition's start position before it takes any record of it
   (so one that dies before has sent nothing), and every later commit carries `LIVE`, except
   the commit that ends a clean revoke or stop, which carries `CLEAN` (and is made even when
   the offset did not move);
2. a member granted a partition whose committed offset carries `LIVE` waits
   LD_REQUEST_TIMEOUT_MS + LD_UNKNOWN_OUTCOME_SETTLE_MS (the longest a request started by the
   last owner may still land: `Timings.landing`, wiring.py) before it takes any record of it;
3. any other mark (none: a new group, a broker that keeps no commit metadata such as Tansu,
   an older version) grants at once.
"""

from __future__ import annotations

CLEAN = "ldc:clean"
LIVE = "ldc:live"


def unclean(mark: str | None) -> bool:
    """Rule 2: the last owner may still have requests landing."""
    return mark == LIVE
