"""The operator commands' filter: which records `outcomes`, `replay` and `verify` look at.

One model (`Filter`), one resource path (`resource_path`), one declaration of the options
(`add_options`) and one reading of them (`from_args`). A command picks the options it takes,
in the order its `--help` lists them, and may word their help for what it reads; names, types,
parsing and matching are the same everywhere:

- `--event-id ID`, `--status S`, `--error-code C`: repeatable; a record matches any one given.
- `--resource GLOB`: an fnmatch glob (case-sensitive) over `project/env/kind/key`; a part that
  is not a string (an invalid event) is empty.
- `--since T`, `--until T`: RFC 3339 (UTC when no offset is given) or a duration ago (`90s`,
  `30m`, `2h`, `7d`); `--since` is inclusive, `--until` exclusive, except in `verify`, whose
  `--until` takes outcomes completed at that instant too.

What each command applies them to (its own module says how): `outcomes` the outcome and its
record's timestamp; `replay` the dead letter's headers, its event and its timestamp; `verify`
the `completedAt` and resource of `succeeded` outcomes, and `--event-id` to the targets those
events touched.
"""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from consumer.cli_errors import UsageError
from consumer.contract.codes import ErrorCode


@dataclass(frozen=True, slots=True)
class _Option:
    dest: str  # its name on the parsed arguments
    help: str  # unless the command words it otherwise
    repeatable: bool = False
    metavar: str | None = None


_OPTIONS = {
    "--event-id": _Option("event_id", "repeatable", repeatable=True),
    "--status": _Option("status", "repeatable", repeatable=True),
    "--error-code": _Option(
        "error_code", "e.g. not_found (repeatable)", repeatable=True, metavar="CODE"
    ),
    "--resource": _Option(
        "resource", "project/env/kind/key glob, e.g. 'demo/production/segment/*'"
    ),
    "--since": _Option("since", "RFC 3339 time or a duration ago (30m, 2h, 7d)"),
    "--until": _Option("until", "RFC 3339 time or a duration ago"),
}


@dataclass(frozen=True, slots=True)
class Filter:
    """The records an operator asked for; an empty field selects everything."""

    event_ids: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    error_codes: frozenset[str] = frozenset()
    resource: str | None = None  # a project/env/kind/key glob
    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def reads_events(self) -> bool:
        """Whether matching needs the event id or resource (replay parses the value for them)."""
        return bool(self.event_ids or self.resource)

    def reason_to_skip(
        self,
        at_ms: float,
        *,
        status: object = None,
        error_code: object = None,
        event_id: object = None,
        resource: str = "",
    ) -> str | None:
        """Why a record is not selected, or None when it is. The first reason found, in this
        order (replay counts its skips by it): time, status, error code, event id, resource."""
        outside = self.outside(at_ms)
        if outside is not None:
            return outside
        if self.statuses and status not in self.statuses:
            return "other status"
        if self.error_codes and error_code not in self.error_codes:
            return "other error code"
        if self.event_ids and event_id not in self.event_ids:
            return "other event id"
        if not self.takes_resource(resource):
            return "other resource"
        return None

    def outside(self, at_ms: float, *, until_inclusive: bool = False) -> str | None:
        """Why a time is outside `--since`/`--until`, or None when it is inside."""
        if self.since_ms is not None and at_ms < self.since_ms:
            return "before --since"
        if self.until_ms is not None and (
            at_ms > self.until_ms if until_inclusive else at_ms >= self.until_ms
        ):
            return "after --until"
        return None

    def takes_resource(self, path: str) -> bool:
        return not self.resource or fnmatch.fnmatchcase(path, self.resource)

    def takes_any_event(self, event_ids: Collection[str]) -> bool:
        """Whether one of these events is asked for (all are without `--event-id`)."""
        return not self.event_ids or not self.event_ids.isdisjoint(event_ids)


def resource_path(project: object, environment: object, kind: object, key: object) -> str:
    """`project/env/kind/key`, what `--resource` matches; a part that is not a string is empty."""
    return "/".join(p if isinstance(p, str) else "" for p in (project, environment, kind, key))


def add_options(
    parser: argparse.ArgumentParser,
    *options: str,
    statuses: Sequence[str] = (),
    wording: Mapping[str, str] | None = None,
) -> None:
    """Declare the filter options named (e.g. "--since"), in that order; `statuses` are the
    choices of `--status`, `wording` an option's help for this command."""
    assert ("--status" in options) == bool(statuses), "--status needs its choices, and only it"
    choices: dict[str, list[str]] = {
        "--status": list(statuses),
        "--error-code": [code.value for code in ErrorCode],
    }
    for name in options:
        option = _OPTIONS[name]
        parser.add_argument(
            name,
            action="append" if option.repeatable else "store",
            choices=choices.get(name),
            metavar=option.metavar,
            help=(wording or {}).get(name, option.help),
        )


def from_args(args: argparse.Namespace) -> Filter:
    """The filter the parsed options ask for (an option the command lacks leaves its field
    open); a time that does not parse is a usage error naming the command (`args.command`)."""

    def given(option: str) -> Any:
        return getattr(args, _OPTIONS[option].dest, None)

    try:
        since, until = (parse_when(t) if t else None for t in (given("--since"), given("--until")))
    except ValueError as exc:
        raise UsageError(f"{args.command}: {exc}") from None
    return Filter(
        event_ids=frozenset(given("--event-id") or ()),
        statuses=frozenset(given("--status") or ()),
        error_codes=frozenset(given("--error-code") or ()),
        resource=given("--resource"),
        since_ms=since,
        until_ms=until,
    )


_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400}


def parse_when(text: str, *, now: datetime | None = None) -> int:
    """Epoch milliseconds of an RFC 3339 time or of a duration ago (`90s`, `30m`, `2h`, `7d`)."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value[:-1].isdigit() and value[-1:] in _UNITS:
        return int((now.timestamp() - int(value[:-1]) * _UNITS[value[-1]]) * 1000)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (RFC 3339, or a duration such as 30m, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)
