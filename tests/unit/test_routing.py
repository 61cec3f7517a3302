import pytest

from consumer.contract.events import TargetingEvent
from consumer.launchdarkly.routing import (
    BIG_SEGMENT_ENDPOINTS,
    ROUTES,
    SPECS,
    Endpoint,
    big_segment_route,
    request_body,
    route,
)
from tests.factories import INSTRUCTIONS, event_dict, parse

EXPECTED = {
    Endpoint.SEGMENT_EXPIRING_TARGETS: "/api/v2/segments/proj/beta/expiring-targets/production",
    Endpoint.SEGMENT_EXPIRING_USER_TARGETS: "/api/v2/segments/proj/beta/expiring-user-targets/production",
    Endpoint.FLAG_EXPIRING_TARGETS: "/api/v2/flags/proj/beta/expiring-targets/production",
    Endpoint.SEGMENT_TARGETS: "/api/v2/segments/proj/production/beta",
}


def test_the_table_covers_every_instruction_kind_of_the_models() -> None:
    assert set(ROUTES) == set(INSTRUCTIONS)
    assert len(ROUTES) == 18


@pytest.mark.parametrize(("resource_kind", "kind"), sorted(ROUTES))
def test_route_of_every_kind(resource_kind: str, kind: str) -> None:
    event: TargetingEvent = parse(event_dict(resource_kind, kind))
    where = route(event)
    assert where.endpoint is ROUTES[(resource_kind, kind)]
    assert where.path == EXPECTED[where.endpoint]
    assert where.environment_key == "production"


def test_contract_table_spot_checks() -> None:
    assert ROUTES[("segment", "addExpireUserTargetDate")] is Endpoint.SEGMENT_EXPIRING_USER_TARGETS
    assert ROUTES[("flag", "removeExpiringTarget")] is Endpoint.FLAG_EXPIRING_TARGETS
    assert ROUTES[("segment", "removeExcludedUsers")] is Endpoint.SEGMENT_TARGETS
    assert ROUTES[("segment", "updateName")] is Endpoint.SEGMENT_TARGETS
    assert ("flag", "updateName") not in ROUTES
    assert ("flag", "addIncludedTargets") not in ROUTES


def test_only_the_segment_writes_are_all_or_nothing_and_limited() -> None:
    for endpoint, spec in SPECS.items():
        is_patch = endpoint is Endpoint.SEGMENT_TARGETS
        is_big = endpoint in BIG_SEGMENT_ENDPOINTS
        assert spec.per_instruction_errors is not (is_patch or is_big)
        assert spec.body_has_environment_key is is_patch
        assert spec.max_target_operations == (1_500 if is_patch or is_big else None)
        assert spec.method == ("POST" if is_big else "PATCH")


def test_big_segment_routes_and_body() -> None:
    patch = route(parse(event_dict()))
    contexts = big_segment_route(patch, Endpoint.BIG_SEGMENT_CONTEXTS)
    users = big_segment_route(patch, Endpoint.BIG_SEGMENT_USERS)
    assert contexts.path == "/api/v2/segments/proj/production/beta/contexts"
    assert users.path == "/api/v2/segments/proj/production/beta/users"
    instructions = [
        {"kind": "addIncludedTargets", "contextKind": "org", "values": ["a", "b"]},
        {"kind": "removeExcludedTargets", "contextKind": "org", "values": ["c"]},
        {"kind": "addIncludedTargets", "contextKind": "org", "values": ["a"]},
    ]
    # No comment and no environmentKey: SegmentUserState has neither.
    assert request_body(contexts, instructions, "ticket 7") == {
        "included": {"add": ["a", "b"]},
        "excluded": {"remove": ["c"]},
    }


def test_request_body_shapes() -> None:
    patch = route(parse(event_dict()))
    expiring = route(parse(event_dict("segment", "addExpiringTarget")))
    instructions = [{"kind": "x"}]
    assert request_body(patch, instructions, "c") == {
        "environmentKey": "production",
        "instructions": instructions,
        "comment": "c",
    }
    assert request_body(expiring, instructions, None) == {"instructions": instructions}


def test_dotted_keys_stay_one_segment() -> None:
    where = route(parse(event_dict(key="a..b", project=".p", env="e.")))
    assert where.path == "/api/v2/segments/.p/e./a..b"
