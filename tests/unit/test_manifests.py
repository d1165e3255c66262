"""deploy/, checked offline: every kustomization renders (the same as
`kubectl kustomize` where kubectl is installed), every object is valid
against the Kubernetes schemas of two minor versions (kubernetes-validate,
strict), the YAML passes yamllint and the Dockerfile hadolint; and the
manifests agree with the code: the arguments parse with oomtrace's own
command line, the agent mounts every place it reads, the selectors and named
ports meet. make test-deploy then runs them (tests/deploy/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from oomtrace.agent.cgroups.container_runtimes import RuntimeRoots
from oomtrace.cli import build_parser
from tests.kustomize import KUBERNETES, find, overlays, render

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The oldest minor still commonly run, and a recent one: every field used
# must exist in both (appArmorProfile, for one, came in 1.30).
KUBERNETES_VERSIONS = ("1.30.0", "1.35.0")
OVERLAY_IDS = [str(d.relative_to(KUBERNETES)) for d in overlays()]
# Custom resources: no schema is bundled, so these are checked by hand below.
CUSTOM_GROUPS = ("monitoring.coreos.com/",)


@pytest.fixture(scope="module", params=overlays(), ids=OVERLAY_IDS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def _agent(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "DaemonSet", "oomtrace-agent")


def _collector(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """One collector on its volume (StatefulSet), or several on PostgreSQL."""
    for kind in ("StatefulSet", "Deployment"):
        try:
            return find(objects, kind, "oomtrace-collector")
        except KeyError:
            continue
    raise KeyError("no collector workload")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    c: dict[str, Any] = container
    return c


@pytest.mark.parametrize("directory", overlays(), ids=OVERLAY_IDS)
def test_renders_as_kubectl_does(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: tests/kustomize.py's rendering is not cross-checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True
    ).stdout

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    theirs = {key(o): o for o in yaml.safe_load_all(out) if o}
    assert {key(o): o for o in render(directory)} == theirs


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_kubernetes(rendered: list[dict[str, Any]], version: str) -> None:
    checked = 0
    for obj in rendered:
        if obj["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked >= 8


def test_yaml_style() -> None:
    p = subprocess.run(
        [str(BIN / "yamllint"), "-f", "parsable", "-c", str(REPO / ".yamllint.yaml"), "deploy"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_lint() -> None:
    p = subprocess.run(
        [str(BIN / "hadolint"), "deploy/image/Dockerfile"], cwd=REPO, capture_output=True, text=True
    )
    assert p.returncode == 0, p.stdout + p.stderr


def test_arguments_are_oomtraces_own(rendered: list[dict[str, Any]]) -> None:
    parser = build_parser()
    agent = parser.parse_args(_container(_agent(rendered))["args"])
    assert agent.command == "agent"
    collector = parser.parse_args(_container(_collector(rendered))["args"])
    assert collector.command == "collector"
    # The agent sends to the collector's Service, on its gRPC port.
    service = find(rendered, "Service", "oomtrace-collector")
    host, port = agent.collector.rsplit(":", 1)
    assert host == "oomtrace-collector.oomtrace.svc"
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert int(port) == grpc["port"]
    assert collector.listen.endswith(f":{port}")
    # Durable state on the node, the history on the volume.
    mounts = {m["mountPath"]: m["name"] for m in _container(_agent(rendered))["volumeMounts"]}
    assert mounts[str(agent.state_dir)] == "state"
    ccontainer = _container(_collector(rendered))
    cmounts = {m["mountPath"] for m in ccontainer["volumeMounts"]}
    if collector.store:
        # PostgreSQL: the URL from the Secret's env, the password from a file.
        env = {e["name"] for e in ccontainer["env"]}
        assert collector.store.startswith("$(")
        assert collector.store[2:-1] in env
        assert str(collector.store_password_file.parent) in cmounts
    else:
        assert str(collector.db.parent) in cmounts


def test_the_agent_mounts_what_it_reads(rendered: list[dict[str, Any]]) -> None:
    """Each runtime's default state directory, under --host-root, is a
    read-only mount of the same path on the node; and /dev/kmsg, BTF,
    cgroups, tracefs and the state directory are there."""
    ds = _agent(rendered)
    spec = ds["spec"]["template"]["spec"]
    container = _container(ds)
    args = build_parser().parse_args(container["args"])
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    mounted = {m["mountPath"]: m for m in container["volumeMounts"]}
    roots = RuntimeRoots()
    wanted = [
        *roots.containerd_tasks,
        *roots.crio_containers,
        *roots.docker_containers,
        *roots.runc_state,
    ]
    for path in wanted:
        inside = args.host_root / path.relative_to("/")
        covering = [m for p, m in mounted.items() if inside == Path(p) or Path(p) in inside.parents]
        assert covering, f"nothing mounted at {inside}"
        (m,) = covering
        assert m.get("readOnly") is True
        node_path = Path(host_paths[m["name"]]) / inside.relative_to(m["mountPath"])
        assert node_path == path, f"{inside} is the node's {node_path}, not {path}"
    for node_dir in ("/sys", "/sys/kernel/tracing", "/dev/kmsg", "/lib/modules", "/usr/src"):
        assert host_paths[mounted[node_dir]["name"]] == node_dir
    assert spec["hostPID"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_agent_is_guaranteed_and_probed(rendered: list[dict[str, Any]]) -> None:
    """Requests equal to limits: QoS Guaranteed, so oom_score_adj -997."""
    container = _container(_agent(rendered))
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert set(resources["limits"]) == {"cpu", "memory"}
    ports = {p["name"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
        assert container[probe]["httpGet"]["port"] in ports
    metrics = build_parser().parse_args(container["args"]).metrics_listen
    assert metrics.endswith(f":{container['ports'][0]['containerPort']}")


def test_collector_is_not_root(rendered: list[dict[str, Any]]) -> None:
    sts = _collector(rendered)
    pod = sts["spec"]["template"]["spec"]
    container = _container(sts)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    ports = {p["name"] for p in container["ports"]}
    assert {"grpc", "metrics"} <= ports
    # A kubelet's gRPC probe has no client certificate: /healthz on metrics.
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    if sts["kind"] == "StatefulSet":
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] in {m["name"] for m in container["volumeMounts"]}
    else:
        assert sts["spec"]["replicas"] >= 2


def _labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_selectors_and_named_ports_meet(rendered: list[dict[str, Any]]) -> None:
    agent, collector = _agent(rendered), _collector(rendered)
    service = find(rendered, "Service", "oomtrace-collector")
    assert _selects({"matchLabels": service["spec"]["selector"]}, _labels(collector))
    assert not _selects({"matchLabels": service["spec"]["selector"]}, _labels(agent))
    collector_ports = {p["name"] for p in _container(collector)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= collector_ports
    for workload in (agent, collector):
        assert _selects(workload["spec"]["selector"], _labels(workload))
    policies = [o for o in rendered if o["kind"] == "NetworkPolicy"]
    by_target = {
        w["metadata"]["name"]: w
        for w in (agent, collector)
        if any(_selects(p["spec"]["podSelector"], _labels(w)) for p in policies)
    }
    assert set(by_target) == {"oomtrace-agent", "oomtrace-collector"}
    ingest = find(rendered, "NetworkPolicy", "oomtrace-collector")["spec"]["ingress"][0]
    assert any(_selects(f["podSelector"], _labels(agent)) for f in ingest["from"])
    assert {p["port"] for p in ingest["ports"]} == {"grpc"}
    for obj in rendered:
        if obj["kind"] in ("PodMonitor", "ServiceMonitor"):
            target = agent if obj["kind"] == "PodMonitor" else service
            labels = _labels(agent) if obj["kind"] == "PodMonitor" else target["metadata"]["labels"]
            assert _selects(obj["spec"]["selector"], labels)
            endpoints = obj["spec"].get("podMetricsEndpoints") or obj["spec"]["endpoints"]
            names = (
                {p["name"] for p in _container(agent)["ports"]}
                if obj["kind"] == "PodMonitor"
                else {p["name"] for p in service["spec"]["ports"]}
            )
            assert {e["port"] for e in endpoints} <= names


def test_least_privilege_lists_capabilities() -> None:
    objects = render(KUBERNETES / "overlays/least-privilege")
    sc = _container(_agent(objects))["securityContext"]
    assert sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE", "SYSLOG"} <= set(sc["capabilities"]["add"])


def test_kube_events_grants_only_events() -> None:
    objects = render(KUBERNETES / "overlays/kube-events")
    args = build_parser().parse_args(_container(_collector(objects))["args"])
    assert args.kube_events
    assert find(objects, "ServiceAccount", "oomtrace-collector")["automountServiceAccountToken"]
    (rule,) = find(objects, "ClusterRole", "oomtrace-collector-events")["rules"]
    assert rule == {
        "apiGroups": ["events.k8s.io"],
        "resources": ["events"],
        "verbs": ["create", "patch"],
    }
    binding = find(objects, "ClusterRoleBinding", "oomtrace-collector-events")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "oomtrace-collector", "namespace": "oomtrace"}
    ]


def test_both_ends_speak_mutual_tls_from_mounted_secrets(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    """Every TLS file an argument names is in a read-only Secret mount, and
    the Secrets `oomtrace certs --secrets` writes are the ones mounted, with
    the keys the arguments name."""
    from oomtrace import tls

    tls.make_set(tmp_path, collector_hosts=("oomtrace-collector.oomtrace.svc",), shared_agents=True)
    written = {
        d["metadata"]["name"]: d
        for d in yaml.safe_load_all(tls.write_secrets(tmp_path, agents=True).read_text())
    }
    for workload, flags in (
        (_agent(rendered), ("tls_ca", "tls_cert", "tls_key")),
        (_collector(rendered), ("tls_cert", "tls_key", "client_ca")),
    ):
        container = _container(workload)
        args = build_parser().parse_args(container["args"])
        assert not args.insecure
        volumes = {v["name"]: v for v in workload["spec"]["template"]["spec"]["volumes"]}
        for flag in flags:
            path = getattr(args, flag)
            (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
            assert mount.get("readOnly") is True
            secret = volumes[mount["name"]]["secret"]["secretName"]
            assert path.name in written[secret]["data"], f"{secret} has no {path.name}"
    for doc in written.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)
