"""The dashboard and the alert rules as data: their queries, and the metrics and labels they
use (read with a real PromQL parser, so a query that does not parse fails the tests)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import promql_parser
import yaml

from consumer.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "observability" / "grafana" / "dashboards" / "ld-targeting-consumer.json"
RULES = ROOT / "observability" / "prometheus" / "alerts.yml"

# Added by Prometheus to every series it scrapes, never served by the consumer.
TARGET_LABELS = {"job", "instance"}
# Series Prometheus makes up itself about each target.
SYNTHETIC_METRICS = {"up"}

# The sample names a family of each type is served as (prometheus_client's text format; no
# `_created` samples: consumer/service/metrics.py turns them off).
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "info": ("_info",),
}


def declared_metrics() -> set[str]:
    """Every sample name the service's registry (consumer/service/metrics.py) can serve, read without
    running anything (a running consumer's /metrics: tests/integration/test_observability.py)."""
    registry = Metrics().registry
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SAMPLE_SUFFIXES[family.type]
    }


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels of a collapsed row


# Grafana's variables, replaced by values that parse (what Grafana itself does before sending).
_GRAFANA_VARIABLES = [
    (re.compile(r"\$__(rate_)?interval"), "5m"),
    (re.compile(r"\$\{?\w+\}?"), ".+"),
]


def grafana_to_promql(expr: str) -> str:
    for pattern, value in _GRAFANA_VARIABLES:
        expr = pattern.sub(value, expr)
    return expr


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL query of the dashboard: its panels' and its variables' (label_values)."""
    found = [
        grafana_to_promql(target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        assert match, variable["definition"]
        # `label_values(selector, label)` reads `label` of `selector`'s series: as PromQL.
        selector = grafana_to_promql(match["selector"])
        found.append(f"count by ({match['label']}) ({selector})")
    return found


@dataclass(frozen=True)
class Use:
    """A metric name a query reads, with the labels it selects or groups by."""

    metric: str
    labels: frozenset[str]


def uses(query: str) -> list[Use]:
    """The metrics a PromQL query reads. Labels named by `by (...)` or `on (...)` count as
    used by every selector below them."""
    found: list[Use] = []

    def visit(node: Any, inherited: frozenset[str]) -> None:
        kind = type(node).__name__
        if kind == "VectorSelector":
            labels = {m.name for m in node.matchers.matchers} - {"__name__"}
            found.append(Use(node.name, frozenset(labels) | inherited))
        elif kind == "MatrixSelector":
            visit(node.vector_selector, inherited)
        elif kind == "AggregateExpr":
            grouping = frozenset(node.modifier.labels) if node.modifier is not None else frozenset()
            visit(node.expr, inherited | grouping)
            if node.param is not None:
                visit(node.param, inherited)
        elif kind == "BinaryExpr":
            matching = node.modifier.matching if node.modifier is not None else None
            on = frozenset(matching.labels) if matching is not None else frozenset()
            visit(node.lhs, inherited | on)
            visit(node.rhs, inherited | on)
        elif kind == "Call":
            for arg in node.args:
                visit(arg, inherited)
        elif kind in ("ParenExpr", "SubqueryExpr", "UnaryExpr"):
            visit(node.expr, inherited)
        elif kind not in ("NumberLiteral", "StringLiteral"):
            raise AssertionError(f"unexpected PromQL node {kind} in {query!r}")

    visit(promql_parser.parse(query), frozenset())
    return found


def all_queries() -> dict[str, list[str]]:
    """Where each query comes from (for messages) -> the queries."""
    return {
        "dashboard": dashboard_queries(dashboard()),
        "alert rules": [rule["expr"] for rule in rules()],
    }
