import json
from pathlib import Path

import jsonschema
import pytest

from consumer.cli import main
from consumer.contract import schemas
from consumer.demo.samples import demo_samples
from tests.factories import INSTRUCTIONS, encode, event_dict

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_are_up_to_date(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "--check", "--dir", str(ROOT / "schemas")]) == 0


def test_check_fails_on_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 1
    assert main(["schemas", "--dir", str(tmp_path)]) == 0
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "outcome.schema.json").write_text("{}")
    assert main(["schemas", "--check", "--dir", str(tmp_path)]) == 1
    assert "outcome.schema.json" in capsys.readouterr().err


def _validator(name: str) -> jsonschema.protocols.Validator:
    schema = schemas.generate()[name]
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.mark.parametrize(("resource_kind", "kind"), sorted(INSTRUCTIONS))
def test_event_schema_accepts_every_valid_kind(resource_kind: str, kind: str) -> None:
    _validator("event.schema.json").validate(event_dict(resource_kind, kind))


@pytest.mark.parametrize("key", ["..", "a/b", "a%2Fb", ""])
def test_event_schema_rejects_what_the_models_reject(key: str) -> None:
    validator = _validator("event.schema.json")
    assert not validator.is_valid(event_dict(key=key))
    assert not validator.is_valid({**event_dict(), "extra": 1})
    assert not validator.is_valid(event_dict(kind="deleteAll"))


def test_schema_and_models_agree_on_the_samples() -> None:
    from consumer.contract.events import Invalid, decode

    validator = _validator("event.schema.json")
    for sample in demo_samples():
        try:
            document = json.loads(sample.value)
        except ValueError:
            continue
        assert validator.is_valid(document) == (not isinstance(decode(sample.value), Invalid)), (
            sample.note
        )
    assert validator.is_valid(json.loads(encode(event_dict())))


def test_asyncapi_describes_the_three_topics_with_the_schema_files() -> None:
    document = json.loads((ROOT / "schemas" / "asyncapi.json").read_text())
    assert document["asyncapi"].startswith("3.")
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {"ld.targeting-changes", "ld.targeting-results", "ld.targeting-changes.dlq"}
    refs = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    refs.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(document)
    for ref in refs:
        if ref.startswith("#/"):
            target: object = document
            for part in ref[2:].split("/"):
                assert isinstance(target, dict) and part in target, ref
                target = target[part]
        else:
            assert (ROOT / "schemas" / ref).exists(), ref
    assert {r for r in refs if not r.startswith("#")} == {
        "event.schema.json",
        "outcome.schema.json",
        "dead-letter-headers.schema.json",
    }
    for operation in document["operations"].values():
        assert operation["action"] in ("send", "receive")
