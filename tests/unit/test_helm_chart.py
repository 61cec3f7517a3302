"""The Helm chart (deploy/helm/ld-targeting-consumer), checked without a cluster: each example
values file is linted and rendered by helm, every rendered object is checked against the
schema of its kind (tests/helm_chart.py), and the rules that make a consumer group safe are
asserted on the objects. Rendering must fail, with a message that says why, on values that
break them.

helm is built by scripts/helm on first use (a few minutes, then cached); without it the tests
that run helm skip, except under CI, where they fail.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin

import jsonschema
import pytest
import yaml

from consumer.service.lifecycle import STOP_GRACE
from consumer.settings import Settings, SettingsError, load_settings, violations
from tests.helm_chart import (
    CHART,
    EXAMPLES,
    NAMESPACE,
    RELEASE,
    Rendered,
    RenderFailed,
    ToolMissing,
    crd_schema,
    ensure_helm,
    leaves,
    lint,
    notes,
    render,
    render_text,
    schema_errors,
)
from tests.observability import (
    DASHBOARD,
    RULES,
    SYNTHETIC_METRICS,
    dashboard_queries,
    declared_metrics,
    uses,
)

# Building helm the first time takes minutes (every later run: seconds); helm's own commands
# are bounded in tests/helm_chart.py.
pytestmark = pytest.mark.timeout(1_500)

ROOT = Path(__file__).resolve().parents[2]
# The image's user (Dockerfile: USER <uid>), which the pod must run as.
_USER = re.search(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
assert _USER is not None
DOCKERFILE_UID = int(_USER[1])
# Set from Secrets by the chart, never in its ConfigMap.
SECRET_SETTINGS = {"LD_API_TOKEN", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"}
CHART_MANAGED = SECRET_SETTINGS | {
    "LD_API_TOKEN_FILE",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
}
# The least the scale-down stabilisation may be: a draining backlog must not shrink the group
# (a rebalance of every member) every few seconds.
MIN_SCALE_DOWN_WINDOW = 300


@pytest.fixture(scope="module")
def helm_available() -> None:
    try:
        ensure_helm()
        crd_schema("keda.sh/v1alpha1", "ScaledObject")
        crd_schema("monitoring.coreos.com/v1", "PodMonitor")
    except ToolMissing as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the chart's tools are missing: {exc}")
        pytest.skip(f"the chart's tools are missing: {exc}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values over values, as helm merges them (maps key by key, anything else replaced)."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merge(base[key], value) if both else value
    return out


DEFAULTS: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())


class Example(NamedTuple):
    name: str
    values: dict[str, Any]  # the example's values over the chart's defaults
    objects: Rendered


# For the tests that run helm itself (the others read the chart's files only).
needs_helm = pytest.mark.usefixtures("helm_available")


@pytest.fixture(scope="module")
def rendered(helm_available: None) -> dict[str, Rendered]:
    return {name: Rendered(render([path])) for name, path in EXAMPLES.items()}


@pytest.fixture(params=sorted(EXAMPLES))
def example(request: pytest.FixtureRequest, rendered: dict[str, Rendered]) -> Example:
    name = request.param
    values = _merge(DEFAULTS, yaml.safe_load(EXAMPLES[name].read_text()))
    return Example(name, values, rendered[name])


def test_the_examples_cover_what_is_checked() -> None:
    assert {"minimal", "existing-secret", "keda", "keda-sasl", "plain-token"} <= set(EXAMPLES)


# -- helm lint, and the API schemas ----------------------------------------------------------


@needs_helm
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_helm_lint_passes_for_each_example(name: str) -> None:
    done = lint([EXAMPLES[name]])
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rendered_object_matches_the_schema_of_its_kind(example: Example) -> None:
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": schema_errors(obj)
        for obj in example.objects.objects
    }
    assert {name: found for name, found in problems.items() if found} == {}
    for obj in example.objects.objects:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["kind"]


def test_the_schema_check_can_fail(rendered: dict[str, Rendered]) -> None:
    objects = json.loads(json.dumps(rendered["keda-sasl"].objects))
    by_kind = {obj["kind"]: obj for obj in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    pod["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = "/healthz"
    scaled = by_kind["ScaledObject"]["spec"]
    scaled["advanced"]["horizontalPodAutoscalerConfig"]["behaviour"] = {}
    by_kind["TriggerAuthentication"]["spec"]["secretTargetRef"][0].pop("key")
    by_kind["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["interval"] = 30
    by_kind["PrometheusRule"]["spec"]["groups"][0]["rules"][0]["labels"] = "critical"
    for kind in ("Deployment", "ScaledObject", "TriggerAuthentication", "PodMonitor"):
        assert schema_errors(by_kind[kind]), kind
    assert schema_errors(by_kind["PrometheusRule"])


# -- the pod -----------------------------------------------------------------------------------


def test_probes_use_the_service_health_endpoints(example: Example) -> None:
    container = example.objects.container
    port = int(example.objects.config["CONSUMER_HTTP_PORT"])
    assert container["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
    # /healthz depends on neither Kafka nor LaunchDarkly (consumer/service/health.py), so an outage
    # never restarts members; /readyz says whether a member is doing its work.
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_the_grace_period_outlasts_the_service_stop(example: Example) -> None:
    shutdown_s = int(example.objects.config["CONSUMER_SHUTDOWN_TIMEOUT_MS"]) / 1000
    # The stop is bounded by the shutdown timeout plus STOP_GRACE (consumer/service/lifecycle.py).
    assert example.objects.pod["terminationGracePeriodSeconds"] > shutdown_s + STOP_GRACE


def test_the_grace_period_is_derived_with_its_margin(rendered: dict[str, Rendered]) -> None:
    objects = rendered["existing-secret"]
    shutdown_ms = int(objects.config["CONSUMER_SHUTDOWN_TIMEOUT_MS"])
    expected = (
        math.ceil(shutdown_ms / 1000) + STOP_GRACE + DEFAULTS["terminationGraceMarginSeconds"]
    )
    assert objects.pod["terminationGracePeriodSeconds"] == expected


def test_the_pod_runs_unprivileged_on_a_read_only_root(example: Example) -> None:
    pod, container = example.objects.pod, example.objects.container
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == DOCKERFILE_UID
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    for mount in container["volumeMounts"]:
        if mount["mountPath"] != "/tmp":
            assert mount["readOnly"] is True, mount
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert container["args"] == ["run"]


def test_the_service_accepts_the_settings_it_is_given(
    example: Example, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment the container gets, read as `run` reads it: every value valid and every
    rule between settings kept (otherwise every member would crash-loop after the rollout)."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    environment = dict(example.objects.config)
    for env in example.objects.container["env"]:
        if "value" in env:
            environment[env["name"]] = env["value"]
        elif env["name"] in SECRET_SETTINGS | {"KAFKA_SASL_USERNAME"}:
            environment[env["name"]] = "from-a-secret-0123456789"
    for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
        environment.pop(name, None)  # files of a Secret volume, not on this machine
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    try:
        load_settings()
    except SettingsError as exc:
        pytest.fail(f"the service would refuse to start: {exc}")


@needs_helm
def test_a_config_change_rolls_the_pods() -> None:
    def checksum(overrides: dict[str, Any] | None) -> str:
        objects = Rendered(render([EXAMPLES["minimal"]], overrides))
        annotations = objects.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
        value: str = annotations["checksum/config"]
        return value

    assert checksum(None) != checksum({"config": {"CONSUMER_BATCH_LINGER_MS": 500}})


# -- the API token and the other secrets -------------------------------------------------------


def test_secrets_reach_the_pod_only_from_secrets(example: Example) -> None:
    for configmap in example.objects.all("ConfigMap"):
        assert not CHART_MANAGED & set(configmap["data"]), configmap["metadata"]["name"]
    env = {entry["name"]: entry for entry in example.objects.container["env"]}
    for name in SECRET_SETTINGS & set(env):
        assert set(env[name]) == {"name", "valueFrom"}, name
        assert set(env[name]["valueFrom"]) == {"secretKeyRef"}, name


def test_the_token_comes_from_a_secret_key_or_a_mounted_secret_file(example: Example) -> None:
    token = example.values["ldApiToken"]
    objects = example.objects
    secret_name = token["existingSecret"] or f"{RELEASE}-ld-targeting-consumer-ld-api-token"
    secret_key = token["existingSecretKey"] if token["existingSecret"] else "token"
    env = {entry["name"]: entry for entry in objects.container["env"]}
    if token["mountAsFile"]:
        assert "LD_API_TOKEN" not in env
        path = Path(env["LD_API_TOKEN_FILE"]["value"])
        (mount,) = [
            m for m in objects.container["volumeMounts"] if m["mountPath"] == str(path.parent)
        ]
        assert "subPath" not in mount  # a rotated Secret reaches the file only without subPath
        (volume,) = [v for v in objects.pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret_name
        assert volume["secret"]["items"] == [{"key": secret_key, "path": path.name}]
    else:
        assert "LD_API_TOKEN_FILE" not in env
        assert env["LD_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": secret_name,
            "key": secret_key,
        }
    if token["existingSecret"]:
        assert objects.all("Secret") == []  # the user's Secret, none of the chart's


@needs_helm
def test_a_plain_token_opted_in_is_only_in_a_secret_of_the_chart() -> None:
    token = yaml.safe_load(EXAMPLES["plain-token"].read_text())["ldApiToken"]["value"]
    text = render_text([EXAMPLES["plain-token"]])
    assert token not in text  # in no ConfigMap, env value or annotation
    secret = Rendered(render([EXAMPLES["plain-token"]])).one("Secret")
    assert base64.b64decode(secret["data"]["token"]).decode() == token


# -- members, partitions and KEDA --------------------------------------------------------------


def test_members_stay_within_the_partitions(example: Example) -> None:
    objects, values = example.objects, example.values
    partitions = values["kafka"]["inputTopicPartitions"]
    deployment = objects.one("Deployment")
    scaled = objects.maybe("ScaledObject")
    if values["autoscaling"]["keda"]["enabled"]:
        assert scaled is not None
        # KEDA (through its HPA) owns the member count: a replicas field would fight it.
        assert "replicas" not in deployment["spec"]
        most = scaled["spec"]["maxReplicaCount"]
    else:
        assert scaled is None and objects.maybe("TriggerAuthentication") is None
        most = deployment["spec"]["replicas"]
    if partitions is not None:
        assert most + deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] <= partitions


@pytest.mark.parametrize("name", ["keda", "keda-sasl"])
def test_keda_scales_on_the_group_lag_in_few_large_steps(
    name: str, rendered: dict[str, Rendered]
) -> None:
    objects = rendered[name]
    config = objects.config
    scaled = objects.one("ScaledObject")["spec"]
    assert scaled["scaleTargetRef"] == {"name": objects.one("Deployment")["metadata"]["name"]}
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["consumerGroup"] == config["CONSUMER_GROUP_ID"]
    assert meta["topic"] == config["CONSUMER_INPUT_TOPIC"]
    assert meta["offsetResetPolicy"] == config["CONSUMER_AUTO_OFFSET_RESET"]
    assert int(meta["lagThreshold"]) > 0 and int(meta["activationLagThreshold"]) >= 0
    assert meta["allowIdleConsumers"] == "false"
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= MIN_SCALE_DOWN_WINDOW
    assert scaled["minReplicaCount"] <= scaled["maxReplicaCount"]


def test_keda_reads_the_lag_with_the_consumers_credentials(rendered: dict[str, Rendered]) -> None:
    objects = rendered["keda-sasl"]
    (trigger,) = objects.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["sasl"] == "scram_sha256"  # KAFKA_SASL_MECHANISM SCRAM-SHA-256
    assert trigger["metadata"]["tls"] == "enable"  # KAFKA_SECURITY_PROTOCOL SASL_SSL
    auth = objects.one("TriggerAuthentication")
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    refs = {ref["parameter"]: ref for ref in auth["spec"]["secretTargetRef"]}
    env = {entry["name"]: entry for entry in objects.container["env"]}
    for parameter, variable in (
        ("username", "KAFKA_SASL_USERNAME"),
        ("password", "KAFKA_SASL_PASSWORD"),
    ):
        source = env[variable]["valueFrom"]["secretKeyRef"]
        assert source == {"name": refs[parameter]["name"], "key": refs[parameter]["key"]}
    # The CA KEDA trusts is the file the consumer trusts.
    ca_file = Path(env["KAFKA_SSL_CAFILE"]["value"])
    (mount,) = [
        m for m in objects.container["volumeMounts"] if m["mountPath"] == str(ca_file.parent)
    ]
    (volume,) = [v for v in objects.pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == refs["ca"]["name"]
    assert {"key": refs["ca"]["key"], "path": ca_file.name} in volume["secret"]["items"]


@needs_helm
def test_keda_trusts_the_consumers_ca_and_client_certificate() -> None:
    mutual_tls = {
        "config": {"KAFKA_SECURITY_PROTOCOL": "SSL"},
        "kafka": {
            "tls": {"existingSecret": "kafka-client", "certKey": "tls.crt", "keyKey": "tls.key"}
        },
    }
    objects = Rendered(render([EXAMPLES["keda"]], mutual_tls))
    (trigger,) = objects.one("ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["tls"] == "enable" and "sasl" not in trigger["metadata"]
    auth = objects.one("TriggerAuthentication")
    refs = {ref["parameter"]: (ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "ca": ("kafka-client", "ca.crt"),
        "cert": ("kafka-client", "tls.crt"),
        "key": ("kafka-client", "tls.key"),
    }
    env = {entry["name"]: entry["value"] for entry in objects.container["env"] if "value" in entry}
    files = {
        env[name].rsplit("/", 1)[1]
        for name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE")
    }
    assert files == {"ca.crt", "tls.crt", "tls.key"}
    assert [schema_errors(obj) for obj in objects.objects] == [[]] * len(objects.objects)


def test_keda_without_credentials_needs_no_trigger_authentication(
    rendered: dict[str, Rendered],
) -> None:
    (trigger,) = rendered["keda"].one("ScaledObject")["spec"]["triggers"]
    assert "authenticationRef" not in trigger
    assert {"sasl", "tls"}.isdisjoint(trigger["metadata"])
    assert rendered["keda"].maybe("TriggerAuthentication") is None


def test_rollouts_and_drains_take_one_member_at_a_time(example: Example) -> None:
    deployment = example.objects.one("Deployment")["spec"]
    pdb = example.objects.one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"] == deployment["selector"]
    assert deployment["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    # A chart upgrade that changes nothing in the pod must not restart (rebalance) every member.
    assert "helm.sh/chart" not in deployment["template"]["metadata"]["labels"]


@needs_helm
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_install_notes_render(name: str) -> None:
    text = notes([EXAMPLES[name]])
    assert "/readyz" in text and "docs/kubernetes.md" in text
    token = yaml.safe_load(EXAMPLES[name].read_text())["ldApiToken"].get("value")
    assert not token or token not in text


# -- monitoring ------------------------------------------------------------------------------------


def test_the_chart_ships_the_repository_alert_rules_and_dashboard() -> None:
    # .Files.Get reads only inside the chart: its copies must not drift from the originals.
    for original, copy in (
        (RULES, CHART / "files" / "alerts.yml"),
        (DASHBOARD, CHART / "files" / "ld-targeting-consumer.json"),
    ):
        assert copy.read_bytes() == original.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {original.relative_to(ROOT)}: copy it over"
        )


def _expected_groups(job: str) -> list[dict[str, Any]]:
    """The shipped rule groups, selecting on `job` instead of the compose stack's job name."""
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule["expr"] = rule["expr"].replace('job="ld-targeting-consumer"', f'job="{job}"')
    return groups


def _rules(objects: Rendered) -> list[dict[str, Any]]:
    groups = objects.one("PrometheusRule")["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _job_relabelling(objects: Rendered) -> dict[str, str]:
    (endpoint,) = objects.one("PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
    return dict(relabel)


def test_the_prometheus_rule_is_the_shipped_rules_for_the_scraped_job(
    rendered: dict[str, Rendered],
) -> None:
    objects = rendered["keda"]
    job = f"{RELEASE}-ld-targeting-consumer"  # monitoring.jobName defaults to the full name
    assert objects.one("PrometheusRule")["spec"]["groups"] == _expected_groups(job)
    assert _job_relabelling(objects) == {
        "action": "replace",
        "targetLabel": "job",
        "replacement": job,
    }
    selector = objects.one("PodMonitor")["spec"]["selector"]
    assert selector == objects.one("Deployment")["spec"]["selector"]


@needs_helm
def test_the_job_name_and_runbook_links_can_be_set() -> None:
    monitoring = {
        "jobName": "ldc-prod",
        "prometheusRule": {"runbookBaseUrl": "https://docs.example.com/ldc#"},
    }
    objects = Rendered(render([EXAMPLES["keda"]], {"monitoring": monitoring}))
    expected = [rule for group in _expected_groups("ldc-prod") for rule in group["rules"]]
    assert [rule["expr"] for rule in _rules(objects)] == [rule["expr"] for rule in expected]
    for rule in _rules(objects):
        assert rule["annotations"]["runbook_url"] == "https://docs.example.com/ldc#" + (
            rule["alert"].lower()
        )
    assert _job_relabelling(objects)["replacement"] == "ldc-prod"


def _dashboard(objects: Rendered) -> dict[str, Any]:
    (configmap,) = [
        c for c in objects.all("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # the sidecar's label
    (text,) = configmap["data"].values()
    board: dict[str, Any] = json.loads(text)
    return board


def test_the_dashboard_configmap_is_the_shipped_dashboard(rendered: dict[str, Rendered]) -> None:
    assert _dashboard(rendered["keda"]) == json.loads(DASHBOARD.read_text())


def test_monitoring_objects_name_only_metrics_the_service_serves(
    rendered: dict[str, Rendered],
) -> None:
    objects = rendered["keda"]
    queries = [rule["expr"] for rule in _rules(objects)] + dashboard_queries(_dashboard(objects))
    named = {use.metric for query in queries for use in uses(query)}
    served = declared_metrics() | SYNTHETIC_METRICS
    assert named and named <= served, sorted(named - served)


def test_monitoring_is_off_unless_asked_for(rendered: dict[str, Rendered]) -> None:
    kinds = {obj["kind"] for obj in rendered["minimal"].objects}
    assert kinds == {"ServiceAccount", "ConfigMap", "Deployment", "PodDisruptionBudget"}


# -- what rendering refuses ------------------------------------------------------------------------


class Refused(NamedTuple):
    why: str
    example: str
    overrides: dict[str, Any]
    message: str  # what helm's error must say


REFUSED = [
    Refused(
        "grace period ending with the stop",
        "minimal",
        {"terminationGracePeriodSeconds": 25},  # 20 s shutdown + 5 s: no margin at all
        "terminationGracePeriodSeconds (25) must be greater than CONSUMER_SHUTDOWN_TIMEOUT_MS",
    ),
    Refused(
        "grace period shorter than the shutdown timeout",
        "minimal",
        {"terminationGracePeriodSeconds": 40, "config": {"CONSUMER_SHUTDOWN_TIMEOUT_MS": 60000}},
        "terminationGracePeriodSeconds (40) must be greater than",
    ),
    Refused(
        "more KEDA members than partitions",
        "keda",
        {"autoscaling": {"keda": {"maxReplicas": 13}}},
        "autoscaling.keda.maxReplicas (13) must not exceed kafka.inputTopicPartitions (12)",
    ),
    Refused(
        "more members than partitions",
        "existing-secret",
        {"replicaCount": 16},
        "replicaCount (16) must not exceed kafka.inputTopicPartitions (12)",
    ),
    Refused(
        "a surge member beyond the partitions",
        "existing-secret",
        {"replicaCount": 12, "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}},
        "replicaCount (12) + rollingUpdate.maxSurge (1) must not exceed"
        " kafka.inputTopicPartitions (12)",
    ),
    Refused(
        "KEDA with auto offset reset none",
        "keda",
        {"config": {"CONSUMER_AUTO_OFFSET_RESET": "none"}},
        "autoscaling.keda.enabled with CONSUMER_AUTO_OFFSET_RESET=none",
    ),
    Refused(
        "a plain token without the opt-in",
        "minimal",
        {"ldApiToken": {"existingSecret": "", "value": "api-0123456789abcdef"}},
        "ldApiToken.value: the API token in plain text in the values is refused",
    ),
    Refused(
        "no token at all",
        "minimal",
        {"ldApiToken": {"existingSecret": ""}},
        "ldApiToken.existingSecret is required",
    ),
    Refused(
        "the token in the ConfigMap",
        "minimal",
        {"config": {"LD_API_TOKEN": "api-0123456789abcdef"}},
        "config.LD_API_TOKEN: set by the chart from a Secret, never in the ConfigMap",
    ),
    Refused(
        "a SASL password in the ConfigMap",
        "existing-secret",
        {"config": {"KAFKA_SASL_PASSWORD": "hunter2hunter2"}},
        "config.KAFKA_SASL_PASSWORD: set by the chart from a Secret",
    ),
    Refused(
        "the token as a plain extra variable",
        "minimal",
        {"extraEnv": [{"name": "LD_API_TOKEN", "value": "api-0123456789abcdef"}]},
        "extraEnv LD_API_TOKEN has a plain value",
    ),
    Refused(
        "SASL without credentials",
        "minimal",
        {"config": {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}},
        "kafka.sasl.existingSecret is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL",
    ),
    Refused(
        "a CA for a protocol without TLS",
        "minimal",
        {"kafka": {"tls": {"existingSecret": "kafka-ca"}}},
        "kafka.tls.existingSecret is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use TLS",
    ),
    Refused(
        "a client certificate without its key",
        "keda-sasl",
        {"kafka": {"tls": {"certKey": "tls.crt"}}},
        "kafka.tls.certKey and kafka.tls.keyKey go together",
    ),
    Refused(
        "no brokers",
        "minimal",
        {"config": {"KAFKA_BOOTSTRAP_SERVERS": ""}},
        "config.KAFKA_BOOTSTRAP_SERVERS is required",
    ),
]


@needs_helm
@pytest.mark.parametrize("case", REFUSED, ids=[case.why for case in REFUSED])
def test_rendering_refuses_unsafe_values(case: Refused) -> None:
    with pytest.raises(RenderFailed) as failed:
        render([EXAMPLES[case.example]], case.overrides)
    assert case.message in str(failed.value)


# Rules between timeouts: the chart's message must be the service's own (consumer/settings.py).
SERVICE_RULES = {
    "revoke + commit not within the rebalance": {"KAFKA_REBALANCE_TIMEOUT_MS": 25000},
    "request not within the revoke": {
        "LD_UNKNOWN_OUTCOME_SETTLE_MS": 10000,
        "CONSUMER_SHUTDOWN_TIMEOUT_MS": 25000,
    },
    "request not within the shutdown": {
        "LD_REQUEST_TIMEOUT_MS": 12000,
        "CONSUMER_REVOKE_TIMEOUT_MS": 22000,
        "KAFKA_REBALANCE_TIMEOUT_MS": 30000,
        "CONSUMER_SHUTDOWN_TIMEOUT_MS": 12000,
    },
    "heartbeat not within the session": {"KAFKA_HEARTBEAT_INTERVAL_MS": 10000},
    "outage window not within the retry budget": {"LD_OUTAGE_WINDOW_MS": 300000},
}


@needs_helm
@pytest.mark.parametrize("why", sorted(SERVICE_RULES))
def test_rendering_refuses_the_timeouts_the_service_refuses(why: str) -> None:
    config = {**DEFAULTS["config"], **SERVICE_RULES[why]}
    settings = Settings.model_construct(**{name.lower(): value for name, value in config.items()})
    (broken,) = violations(settings)  # the service's own rule and message
    with pytest.raises(RenderFailed) as failed:
        render([EXAMPLES["minimal"]], {"config": SERVICE_RULES[why]})
    assert f"config: {broken.message}" in str(failed.value)


@needs_helm
def test_every_broken_rule_is_reported_at_once() -> None:
    with pytest.raises(RenderFailed) as failed:
        render(
            [EXAMPLES["keda"]],
            {
                "terminationGracePeriodSeconds": 10,
                "autoscaling": {"keda": {"maxReplicas": 20}},
                "config": {"KAFKA_REBALANCE_TIMEOUT_MS": 25000},
            },
        )
    message = str(failed.value)
    assert "terminationGracePeriodSeconds (10)" in message
    assert "maxReplicas (20)" in message
    assert "KAFKA_REBALANCE_TIMEOUT_MS (25000 >= 25000)" in message


@needs_helm
def test_an_unknown_setting_is_refused_by_the_values_schema() -> None:
    with pytest.raises(RenderFailed) as failed:
        render([EXAMPLES["minimal"]], {"config": {"CONSUMER_SHUTDOWN_TIMEOUT": 30000}})
    assert "CONSUMER_SHUTDOWN_TIMEOUT" in str(failed.value)


@needs_helm
def test_a_short_scale_down_stabilisation_is_refused_by_the_values_schema() -> None:
    short = {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 30}}}
    with pytest.raises(RenderFailed) as failed:
        render([EXAMPLES["keda"]], {"autoscaling": {"keda": short}})
    assert "stabilizationWindowSeconds" in str(failed.value)


# -- the chart's values stay the service's ----------------------------------------------------------


def _setting_schema(name: str) -> dict[str, Any]:
    """What values.schema.json must say of one setting, from its field in consumer/settings.py."""
    field = Settings.model_fields[name]
    annotation = field.annotation
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        bounds = {
            "minimum": next((m.ge for m in field.metadata if hasattr(m, "ge")), None),
            "maximum": next((m.le for m in field.metadata if hasattr(m, "le")), None),
        }
        return {"type": "integer", **{k: v for k, v in bounds.items() if v is not None}}
    if get_origin(annotation) is Literal:
        return {"type": "string", "enum": list(get_args(annotation))}
    return {"type": "string"}


def test_the_values_schema_knows_every_setting_of_the_service() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    config = schema["properties"]["config"]
    assert config["additionalProperties"] is False  # a misspelt setting is refused
    properties = config["properties"]
    assert set(properties) == {name.upper() for name in Settings.model_fields}
    for name in Settings.model_fields:
        found = {k: v for k, v in properties[name.upper()].items() if k != "description"}
        if name.upper() in CHART_MANAGED:
            assert found == {}, name  # any value: the chart refuses it itself, saying why
        elif name == "consumer_http_port":
            # The probes need a fixed port: 0 (any free port) is the service's, not the chart's.
            assert found == {**_setting_schema(name), "minimum": 1}
        else:
            assert found == _setting_schema(name), name


def test_the_chart_defaults_are_the_service_defaults() -> None:
    for name, value in DEFAULTS["config"].items():
        if name in {"KAFKA_BOOTSTRAP_SERVERS", "LOG_FORMAT"}:
            continue  # required here; JSON logs (the image's default too)
        assert Settings.model_fields[name.lower()].default == value, name


def test_the_chart_version_is_the_service_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None and chart["appVersion"] == version[1]


def test_the_readme_describes_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    # Maps passed through as they are: the README describes the map, not each key.
    whole = (
        "config",
        "resources",
        "podSecurityContext",
        "containerSecurityContext",
        "autoscaling.keda.behavior",
        "probes",
        "monitoring.grafanaDashboard.labels",
    )
    described = {
        next((prefix for prefix in whole if path.startswith(f"{prefix}.")), path)
        for path in leaves(DEFAULTS)
    }
    assert sorted(path for path in described if f"| `{path}` |" not in readme) == []
