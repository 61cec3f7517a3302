"""What each semantic-patch endpoint of the simulator takes (instruction kinds and their
fields, checked before anything applies), and the per-instruction answer of the
expiring-targets endpoints. Pure apart from building the aiohttp response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from consumer.simulator.state import InstructionFailed, RequestRejected


def per_instruction(
    instructions: list[dict[str, Any]], apply: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> web.Response:
    items: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, instruction in enumerate(instructions):
        try:
            item = apply(instruction)
        except InstructionFailed as exc:
            errors.append({"instructionIndex": index, "message": str(exc)})
            continue
        if item is not None:
            items.append(item)
    return web.json_response(
        {
            "items": items,
            "_links": {},
            "totalInstructions": len(instructions),
            "successfulInstructions": len(instructions) - len(errors),
            "failedInstructions": len(errors),
            "errors": errors,
        }
    )


_CONTEXT = {"targetType", "contextKey", "contextKind"}
SEGMENT_EXPIRING = {
    "addExpiringTarget": _CONTEXT | {"value"},
    "updateExpiringTarget": _CONTEXT | {"value", "version?"},
    "removeExpiringTarget": _CONTEXT,
}
SEGMENT_EXPIRING_USERS = {
    "addExpireUserTargetDate": {"targetType", "userKey", "value"},
    "updateExpireUserTargetDate": {"targetType", "userKey", "value", "version"},
    "removeExpireUserTargetDate": {"targetType", "userKey"},
}
_FLAG = {"variationId", "contextKey", "contextKind"}
FLAG_EXPIRING = {
    "addExpiringTarget": _FLAG | {"value"},
    "updateExpiringTarget": _FLAG | {"value", "version?"},
    "removeExpiringTarget": _FLAG,
}
SEGMENT_TARGETS = {
    **{
        f"{v}{s}Targets": {"contextKind", "values"}
        for v in ("add", "remove")
        for s in ("Included", "Excluded")
    },
    **{f"{v}{s}Users": {"values"} for v in ("add", "remove") for s in ("Included", "Excluded")},
    "updateName": {"value"},
}


def check_instruction(position: int, instruction: Any, allowed: dict[str, set[str]]) -> None:
    where = f"instructions[{position}]"
    if not isinstance(instruction, dict):
        raise RequestRejected(f"{where} is not an object")
    kind = instruction.get("kind")
    if kind not in allowed:
        raise RequestRejected(f"{where}: unsupported instruction kind {kind!r}")
    fields = allowed[kind]
    required = {f for f in fields if not f.endswith("?")}
    known = {f.rstrip("?") for f in fields} | {"kind"}
    missing = required - set(instruction)
    if missing:
        raise RequestRejected(f"{where}: missing {sorted(missing)}")
    extra = set(instruction) - known
    if extra:
        raise RequestRejected(f"{where}: unknown fields {sorted(extra)}")
    if kind == "updateName":
        if not isinstance(instruction["value"], str) or not instruction["value"]:
            raise RequestRejected(f"{where}: value must be a non-empty string")
        return
    for name in ("value", "version"):
        if name in instruction and (
            not isinstance(instruction[name], int) or isinstance(instruction[name], bool)
        ):
            raise RequestRejected(f"{where}: {name} must be an integer")
    if "values" in instruction and (
        not isinstance(instruction["values"], list)
        or not instruction["values"]
        or not all(isinstance(v, str) and v for v in instruction["values"])
    ):
        raise RequestRejected(f"{where}: values must be a non-empty list of keys")
    if "targetType" in instruction and instruction["targetType"] not in ("included", "excluded"):
        raise RequestRejected(f"{where}: targetType must be included or excluded")
