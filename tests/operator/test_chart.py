"""The Helm chart: lints clean, renders the objects each mode needs, least-privilege RBAC."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from lorafuse.cli import COMMANDS
from lorafuse.operator import naming, rbac

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "lorafuse"
NAMESPACED = ["--set", "watchNamespaces={team-a,team-b}"]


@pytest.fixture(scope="module")
def helm() -> str:
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm.sh")], capture_output=True, text=True, check=True
    )
    return result.stdout.strip().splitlines()[-1]


def template(helm: str, *args: str, namespace: str = "ops") -> list[dict]:
    out = subprocess.run(
        [helm, "template", "lf", str(CHART), "--namespace", namespace, *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def template_error(helm: str, *args: str) -> str:
    result = subprocess.run(
        [helm, "template", "lf", str(CHART), *args], capture_output=True, text=True
    )
    assert result.returncode != 0, "helm template accepted values it should refuse"
    return result.stderr


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def operator_container(objects: list[dict]) -> dict:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def package_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


@pytest.mark.parametrize("values", [[], NAMESPACED], ids=["all-namespaces", "namespaced"])
def test_helm_lint_is_clean(helm, values):
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), *values], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_default_render_is_cluster_wide_operator(helm):
    kinds = sorted(o["kind"] for o in template(helm))
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "ClusterKopfPeering",
        ]
    )


def test_namespaced_mode_renders_roles_not_cluster_roles(helm):
    objects = template(helm, *NAMESPACED)
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in by_kind(objects, "Role")) == [
        "team-a",
        "team-b",
    ]
    for binding in by_kind(objects, "RoleBinding"):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "lf-lorafuse", "namespace": "ops"}
        ]


def test_namespaced_mode_puts_a_peering_in_each_watched_namespace(helm):
    objects = template(helm, *NAMESPACED)
    assert not by_kind(objects, "ClusterKopfPeering")
    peerings = by_kind(objects, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]


def test_cluster_role_equals_operator_rbac_data(helm):
    (role,) = by_kind(template(helm), "ClusterRole")
    assert role["rules"] == rbac.operator_rules(clusterwide=True)


def test_namespaced_roles_equal_operator_rbac_data(helm):
    for role in by_kind(template(helm, *NAMESPACED), "Role"):
        assert role["rules"] == rbac.operator_rules(clusterwide=False)


def test_operator_watches_all_namespaces_by_default(helm):
    args = operator_container(template(helm))["args"]
    assert not any(a.startswith("--namespace") for a in args)


def test_operator_watches_only_listed_namespaces(helm):
    args = operator_container(template(helm, *NAMESPACED))["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_peering_object_is_the_one_the_operator_joins(helm):
    (peering,) = by_kind(template(helm), "ClusterKopfPeering")
    assert peering["metadata"]["name"] == naming.PEERING_NAME


def test_rendered_args_are_accepted_by_the_operator_command(helm):
    if importlib.util.find_spec(COMMANDS["operator"][0]) is None:
        pytest.skip("`lorafuse operator` is not part of this tree")
    for values in ([], NAMESPACED, ["--set", "peering.enabled=false,operator.replicas=1"]):
        top, command, *args = operator_container(
            template(helm, "--set", "operator.verbose=true", *values)
        )["args"]
        assert (top, command) == ("--verbose", "operator")
        parser = argparse.ArgumentParser(exit_on_error=False)
        importlib.import_module(COMMANDS["operator"][0]).configure(parser)
        parser.parse_args(args)


def test_liveness_probe_targets_kopf_health_endpoint(helm):
    container = operator_container(template(helm, "--set", "operator.healthPort=8123"))
    assert "--liveness=http://0.0.0.0:8123/healthz" in container["args"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == 8123


def test_metrics_service_targets_the_metrics_port(helm):
    objects = template(helm, "--set", "metrics.port=9300")
    (service,) = by_kind(objects, "Service")
    assert service["spec"]["ports"][0]["port"] == 9300
    assert "--metrics-port=9300" in operator_container(objects)["args"]


def test_image_tags_default_to_app_version(helm):
    container = operator_container(template(helm))
    version = package_version()
    assert container["image"] == f"ghcr.io/lorafuse/operator:{version}"
    assert f"--merger-image=ghcr.io/lorafuse/merger:{version}" in container["args"]
    assert f"--operator-image=ghcr.io/lorafuse/operator:{version}" in container["args"]


def test_image_tag_can_be_overridden(helm):
    container = operator_container(template(helm, "--set", "operator.image.tag=dev-1"))
    assert container["image"] == "ghcr.io/lorafuse/operator:dev-1"


def test_chart_app_version_is_package_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == package_version() == chart["version"]


def test_operator_pods_run_as_non_root(helm):
    (deployment,) = by_kind(template(helm), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    container = pod["containers"][0]["securityContext"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True


def test_two_replicas_by_default_with_peering(helm):
    objects = template(helm)
    (deployment,) = by_kind(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "--standalone" not in operator_container(objects)["args"]


def test_several_replicas_without_peering_are_refused(helm):
    stderr = template_error(helm, "--set", "peering.enabled=false")
    assert "peering.enabled" in stderr


def test_single_replica_without_peering_runs_standalone(helm):
    objects = template(helm, "--set", "peering.enabled=false", "--set", "operator.replicas=1")
    assert "--standalone" in operator_container(objects)["args"]
    assert not by_kind(objects, "ClusterKopfPeering")


def test_invalid_namespace_name_is_refused(helm):
    assert "watchNamespaces" in template_error(helm, "--set", "watchNamespaces={Team_A}")


def test_unknown_value_is_refused_by_schema(helm):
    assert "replicaz" in template_error(helm, "--set", "operator.replicaz=3")


def test_service_monitor_needs_the_prometheus_operator_api(helm):
    without_api = template(helm, "--set", "serviceMonitor.enabled=true")
    assert not by_kind(without_api, "ServiceMonitor")
    with_api = template(
        helm, "--set", "serviceMonitor.enabled=true", "--api-versions", "monitoring.coreos.com/v1"
    )
    (monitor,) = by_kind(with_api, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"


def test_service_monitor_is_off_by_default(helm):
    objects = template(helm, "--api-versions", "monitoring.coreos.com/v1")
    assert not by_kind(objects, "ServiceMonitor")


def test_chart_crds_equal_lorafuse_crd_output():
    printed = subprocess.run(
        [sys.executable, "-m", "lorafuse", "crd"], capture_output=True, text=True, check=True
    ).stdout
    assert (CHART / "crds" / "crds.yaml").read_text() == printed


def test_rbac_disabled_renders_no_roles(helm):
    objects = template(helm, "--set", "rbac.create=false")
    assert not [o for o in objects if o["kind"].endswith(("Role", "RoleBinding"))]


def value_keys(values: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the values; maps passed whole to Kubernetes count as one key."""
    keys = []
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        whole = key in ("resources", "podSecurityContext", "securityContext")
        if isinstance(value, dict) and value and not whole:
            keys += value_keys(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


def test_every_value_is_documented_in_install_md():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = (REPO / "docs" / "install.md").read_text()
    assert [k for k in value_keys(values) if f"| `{k}` |" not in docs] == []


def _policy_of(helm: str, *values: str):
    """The admin policy the operator builds from the chart's rendered flags."""
    from lorafuse.commands.operator import admin_policy

    _, _, *args = operator_container(template(helm, *values))["args"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    importlib.import_module(COMMANDS["operator"][0]).configure(parser)
    return admin_policy(parser.parse_args(args))


def test_only_the_default_service_account_is_allowed_by_default(helm):
    assert _policy_of(helm).allowed_service_accounts == ("default",)


def test_allowed_service_accounts_reach_the_operators_policy(helm):
    values = ["--set", "policy.allowedServiceAccounts={llm-*,default}"]
    assert _policy_of(helm, *values).allowed_service_accounts == ("llm-*", "default")


def test_gguf_k_quants_are_refused_by_default(helm):
    assert _policy_of(helm).gguf_k_quants is False


def test_gguf_k_quants_value_reaches_the_operators_policy(helm):
    assert _policy_of(helm, "--set", "policy.ggufKQuants=true").gguf_k_quants is True
