"""The Grafana dashboard and the Prometheus alert rules load, their queries parse, and they
cover what the issue lists. (That every metric they read is served: tests/integration/
test_observability.py.)"""

from __future__ import annotations

import re

import promql_parser

from tests.observability import ROOT, all_queries, dashboard, panels, rules, uses


def _metrics(queries: list[str]) -> set[str]:
    return {use.metric for query in queries for use in uses(query)}


def test_every_query_parses() -> None:
    for queries in all_queries().values():
        for query in queries:
            promql_parser.parse(query)  # raises on a syntax error


def test_the_dashboard_is_importable_and_shows_what_operators_ask_for() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids))
    # The data source is a variable, so the file imports into any Grafana as it is.
    assert {"datasource", "job", "instance"} <= {v["name"] for v in board["templating"]["list"]}
    for panel in panels(board):
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
    shown = _metrics(all_queries()["dashboard"])
    assert {
        "ldc_records_consumed_total",  # throughput in
        "ldc_outcomes_total",  # throughput out, outcomes by status
        "ldc_outcome_errors_total",  # ... and by error code
        "ldc_consumer_lag",  # lag per partition
        "ldc_api_request_duration_seconds_bucket",  # API latency
        "ldc_api_requests_total",  # requests by status
        "ldc_api_rate_limited_total",  # 429s
        "ldc_rate_limit_wait_seconds_total",  # rate-limit wait
        "ldc_api_narrowing_requests_total",
        "ldc_dead_letters_total",
        "ldc_events_waiting",
        "ldc_api_available",  # the API gate
        "ldc_api_token_accepted",
        "ldc_commit_duration_seconds_bucket",  # commit latency
    } <= shown


# Where the shipped rules' runbook links point (the Helm chart can replace the base).
RUNBOOK_BASE = (
    "https://github.com/ld-targeting-consumer/ld-targeting-consumer/blob/main/docs/operations.md#"
)


def _anchors(path: str) -> set[str]:
    """GitHub's anchors of the headings of a Markdown page."""
    anchors = set()
    for line in (ROOT / path).read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_every_rule_is_complete_and_its_runbook_is_in_docs_operations() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    runbooks = _anchors("docs/operations.md")
    for rule in found:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        link = rule["annotations"]["runbook_url"]
        assert link.startswith(RUNBOOK_BASE), rule["alert"]
        assert link.removeprefix(RUNBOOK_BASE) == rule["alert"].lower(), rule["alert"]
        assert link.removeprefix(RUNBOOK_BASE) in runbooks, rule["alert"]


def test_the_rules_cover_what_the_issue_lists() -> None:
    by_metric = {rule["alert"]: _metrics([rule["expr"]]) for rule in rules()}
    watched = set().union(*by_metric.values())
    assert {
        "ldc_api_available",  # the API gate closed ...
        "ldc_api_token_accepted",  # ... token refused or API down
        "ldc_consumer_lag",  # lag growing
        "ldc_dead_letters_total",  # dead-letter rate
        "ldc_partitions_assigned",  # no partitions assigned
        "up",  # the process not scraped
    } <= watched
    assert "absent(" in next(r["expr"] for r in rules() if "up" in by_metric[r["alert"]])


def test_a_fresh_consumer_serves_the_labelled_series_at_zero() -> None:
    """The dashboard's error, dead-letter and retry panels show lines before the first error."""
    from prometheus_client import generate_latest

    from consumer.service.metrics import Metrics

    text = generate_latest(Metrics().registry).decode()
    for series in (
        'ldc_outcomes_total{status="succeeded"} 0.0',
        'ldc_outcome_errors_total{code="not_found",status="rejected"} 0.0',
        'ldc_outcome_errors_total{code="not_json",status="invalid"} 0.0',
        'ldc_outcome_errors_total{code="server_error",status="failed"} 0.0',
        'ldc_dead_letters_total{status="failed"} 0.0',
        'ldc_api_retries_total{reason="rate_limited"} 0.0',
        'ldc_batches_sent_total{endpoint="segment-targets"} 0.0',
        'ldc_commits_total{result="failed"} 0.0',
    ):
        assert series in text, series
    assert 'code="unauthorized"' not in text  # never an outcome's code
