"""The Helm chart as data: rendered by a real helm (scripts/helm), and every rendered object
checked against the API schema of its kind, with no cluster.

- Kubernetes' own kinds: the Kubernetes 1.37 schemas bundled by kubernetes-validate (PyPI,
  pinned in pyproject.toml), strict (an unknown field is an error).
- KEDA's and the Prometheus Operator's kinds: the CRDs those projects publish, read from their
  Go modules at pinned versions (`go mod download`: the Go module proxy is reachable where CI
  runs, their release downloads are not), made strict the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "ld-targeting-consumer"
EXAMPLES = {path.stem: path for path in sorted((CHART / "examples").glob("*.yaml"))}
HELM = ROOT / "scripts" / "helm"
RELEASE = "demo"
NAMESPACE = "ld"

# The Kubernetes release the manifests are checked against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.37"

KEDA = "github.com/kedacore/keda/v2@v2.20.2"
PROMETHEUS_OPERATOR = "github.com/prometheus-operator/prometheus-operator@v0.93.0"
# (apiVersion, kind) -> (Go module, the CRD's file in it).
CRDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): (KEDA, "config/crd/bases/keda.sh_scaledobjects.yaml"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"): (
        KEDA,
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): (
        PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): (
        PROMETHEUS_OPERATOR,
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ),
}

HELM_TIMEOUT = 120  # seconds for one helm command once it is built (a render takes < 1 s)
BUILD_TIMEOUT = 1_200  # seconds for scripts/helm's first run (it builds helm) or a download


class ToolMissing(Exception):
    """A tool the chart's tests need could not be had (no Go toolchain, no module proxy)."""


class RenderFailed(Exception):
    """helm refused to render: the message is helm's."""


def _run(
    args: list[str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    # GOTOOLCHAIN=local: use the Go that is here rather than download another one.
    env = {**os.environ, "GOTOOLCHAIN": "local"}
    return subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )


def ensure_helm() -> str:
    """Build helm on first use (scripts/helm caches it); its version line."""
    done = _run([str(HELM), "version", "--short"], BUILD_TIMEOUT)
    if done.returncode != 0:
        raise ToolMissing(f"scripts/helm could not provide helm:\n{done.stderr.strip()}")
    return done.stdout.strip()


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return _run([str(HELM), *args], HELM_TIMEOUT)


def _values_args(values: list[Path], overrides: dict[str, Any] | None, tmp: Path) -> list[str]:
    args = [arg for path in values for arg in ("--values", str(path))]
    if overrides:
        # A values file rather than --set: types and nesting stay as a user would write them.
        extra = tmp / "overrides.yaml"
        extra.write_text(yaml.safe_dump(overrides))
        args += ["--values", str(extra)]
    return args


def render_text(values: list[Path], overrides: dict[str, Any] | None = None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        args = _values_args(values, overrides, Path(tmp))
        done = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    if done.returncode != 0:
        raise RenderFailed(done.stderr.strip())
    return done.stdout


def render(values: list[Path], overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return [obj for obj in yaml.safe_load_all(render_text(values, overrides)) if obj]


def notes(values: list[Path]) -> str:
    """NOTES.txt as `helm install` prints it (a client-side dry run needs no cluster)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = _values_args(values, None, Path(tmp))
        done = helm(
            "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args
        )
    if done.returncode != 0:
        raise RenderFailed(done.stderr.strip())
    return done.stdout.split("\nNOTES:\n", 1)[1]


def lint(values: list[Path]) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as tmp:
        return helm("lint", "--strict", str(CHART), *_values_args(values, None, Path(tmp)))


@dataclass(frozen=True)
class Rendered:
    """One release's objects, by kind."""

    objects: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"{len(found)} {kind} objects"
        return found[0]

    def maybe(self, kind: str) -> dict[str, Any] | None:
        found = self.all(kind)
        assert len(found) <= 1, f"{len(found)} {kind} objects"
        return found[0] if found else None

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers: list[dict[str, Any]] = self.pod["containers"]
        assert len(containers) == 1
        return containers[0]

    @property
    def config(self) -> dict[str, str]:
        """The service's settings: the ConfigMap the container's envFrom names."""
        (source,) = self.container["envFrom"]
        name = source["configMapRef"]["name"]
        (configmap,) = [c for c in self.all("ConfigMap") if c["metadata"]["name"] == name]
        data: dict[str, str] = configmap["data"]
        return data


# -- schemas -------------------------------------------------------------------------------------


def _go_module_dir(module: str) -> Path:
    with tempfile.TemporaryDirectory() as tmp:  # outside any go.mod
        try:
            done = _run(["go", "mod", "download", "-json", module], BUILD_TIMEOUT, cwd=Path(tmp))
        except FileNotFoundError as exc:
            raise ToolMissing(f"reading the CRDs of {module} needs the Go toolchain") from exc
    if done.returncode != 0:
        raise ToolMissing(f"go mod download {module} failed:\n{done.stdout}{done.stderr}")
    return Path(json.loads(done.stdout)["Dir"])


def _strict(node: Any) -> Any:
    """A CRD's OpenAPI v3 schema as a JSON Schema that refuses unknown fields (what
    kubeconform's strict mode does): descriptions dropped, additionalProperties false on every
    object that lists its properties and does not keep unknown fields."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":  # field names, not schema keywords
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        else:
            out[key] = _strict(value)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    module, path = CRDS[(api_version, kind)]
    crd = yaml.safe_load((_go_module_dir(module) / path).read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema: dict[str, Any] = _strict(served["schema"]["openAPIV3Schema"])
    return schema


def schema_errors(obj: dict[str, Any]) -> list[str]:
    """Why `obj` is not a valid object of its kind ([] when it is)."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRDS:
        validator = jsonschema.Draft7Validator(crd_schema(*key))
        return [
            f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(obj)
        ]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted paths of a values tree's leaves (a list or an empty map is a leaf)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{path}.")
        else:
            yield path
