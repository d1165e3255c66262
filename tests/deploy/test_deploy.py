"""make test-deploy: the images, run the way the rendered manifests say
(tests/deploy/pods.py), on real kills in pod-shaped containers of two real
runtimes at their default paths (Docker with the labels cri-dockerd sets,
containerd with the annotations the CRI plugin sets), with the agent
SIGKILLed and the collector restarted in between. Every query goes through
the Service's name from a third container, as `oomtrace history` in a
cluster would.

No Kubernetes API server or kubelet can run here: the pod specs are carried
to the engine field by field, and the fields that only a scheduler or an API
server reads are checked offline (tests/unit/test_manifests.py)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from oomtrace import tls
from tests.deploy.pods import (
    DOCKER,
    NOTES,
    Pod,
    cluster_network,
    docker,
    in_netns,
    logs,
    missing_capabilities,
    netns_pid,
)
from tests.integration.containers import (
    Daemon,
    build_oomgo,
    cri_annotations,
    cri_dockerd_run,
    k8s_parent,
    oci_image_tar,
)
from tests.integration.harness import KmsgReader
from tests.kustomize import KUBERNETES, find, render

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv/bin/python"
SERVICE = "oomtrace-collector.oomtrace.svc"
NODE = "deploy-node-1"
# The DaemonSet's state directory on the node. The test owns it only when it
# made it (this marker): a real agent's state is never touched.
STATE = Path("/var/lib/oomtrace")
MARKER = STATE / ".made-by-oomtrace-test-deploy"
VICTIM_IMAGE = "oomtrace-test/oomgo:deploy"
LIMIT = 64 << 20
RUN = secrets.token_hex(3)
NAMESPACE = f"shop-{RUN}"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="privileged: runs dockerd, containerd and the agent (CI runs as root)"
)


def _version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


@dataclass
class Cluster:
    net: str
    collector: Pod
    agent: Pod
    workdir: Path
    kmsg: KmsgReader
    victims: dict[str, int] = field(default_factory=dict)  # pod name -> pid killed
    notes: list[str] = field(default_factory=list)  # measured, for the report
    peaks: dict[str, int] = field(default_factory=dict)  # container -> peak bytes

    def history(self) -> list[dict[str, Any]]:
        """`oomtrace history` in a third container, through the Service,
        with a reader's certificate."""
        reader = self.workdir / "secrets/reader"
        out = docker(
            "run",
            "--rm",
            "--network",
            f"container:{self.net}",
            "--mount",
            f"type=bind,source={reader},target=/pki,readonly",
            "--user",
            "0",
            self.collector.container["image"],
            "history",
            "--collector",
            f"{SERVICE}:50051",
            "--tls-ca=/pki/ca.crt",
            "--tls-cert=/pki/reader.crt",
            "--tls-key=/pki/reader.key",
            "--namespace",
            NAMESPACE,
            "--since",
            "1h",
            "--limit",
            "500",
            "-o",
            "json",
        )
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_records(self, pods: set[str], timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            records = self.history()
            if pods <= {r["pod"]["name"] for r in records}:
                return records
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no record of {sorted(pods - {r['pod']['name'] for r in records})} "
                    f"in {timeout:.0f} s; agent log:\n{logs(self.agent.name)}"
                )
            time.sleep(1)

    def probe(self, pod: Pod, timeout: float = 300) -> None:
        """Waits until the pod's readiness probe passes, as the kubelet runs it."""
        probe = pod.container["readinessProbe"]
        ports = {p["name"]: p["containerPort"] for p in pod.container["ports"]}
        if "grpc" in probe:
            port = probe["grpc"]["port"]
            code = (
                "import grpc, sys\n"
                "from grpc_health.v1 import health_pb2, health_pb2_grpc\n"
                f"ch = grpc.insecure_channel('127.0.0.1:{port}')\n"
                "r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)\n"
                "sys.exit(0 if r.status == health_pb2.HealthCheckResponse.SERVING else 1)\n"
            )
        else:
            get = probe["httpGet"]
            port = ports.get(get["port"], get["port"])
            code = (
                "import urllib.request\n"
                f"urllib.request.urlopen('http://127.0.0.1:{port}{get['path']}', timeout=2).read()\n"
            )
        pid = netns_pid(self.net)
        deadline = time.monotonic() + timeout
        while in_netns(pid, [str(PYTHON), "-c", code]).returncode != 0:
            state = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", pod.name)
            if not state.startswith("running") or time.monotonic() > deadline:
                raise AssertionError(f"{pod.name} not ready ({state}); log:\n" + logs(pod.name))
            time.sleep(1)

    def note_peak(self, pod: Pod) -> None:
        """The running container's peak memory so far, from its own memory
        cgroup (wherever the engine put it, found in /proc/PID/cgroup)."""
        pid = int(docker("inspect", "-f", "{{.State.Pid}}", pod.name))
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):  # v1
                peak = Path(f"/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes")
            elif controllers == "":  # v2 (or v1's unified, which has no memory files)
                peak = Path(f"/sys/fs/cgroup{path}/memory.peak")
            else:
                continue
            if peak.exists():
                value = int(peak.read_text())
                self.peaks[pod.name] = max(self.peaks.get(pod.name, 0), value)
                return


# -- the engine, the images, the runtimes ----------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[None]:
    ours = subprocess.run([*DOCKER, "version"], capture_output=True).returncode != 0
    subprocess.run([str(REPO / "tools/engine.sh"), "start"], check=True)
    try:
        yield
    finally:
        for name in docker(
            "ps", "-aq", "--filter", f"label=oomtrace-test-run={RUN}", check=False
        ).split():
            docker("rm", "-f", name, check=False)
        if ours:
            subprocess.run([str(REPO / "tools/engine.sh"), "stop"], check=False)


@pytest.fixture(scope="module")
def images(engine: None) -> None:
    subprocess.run([str(REPO / "tools/image.sh")], check=True, timeout=1800)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def victim_image(engine: None, workdir: Path) -> str:
    """A static Go program that grows until its cgroup's limit kills it."""
    ctx = workdir / "victim"
    ctx.mkdir()
    shutil.copy2(build_oomgo(workdir), ctx / "oomgo")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY oomgo /oomgo\nENTRYPOINT ["/oomgo"]\n')
    subprocess.run(
        [*DOCKER, "build", "-q", "-t", VICTIM_IMAGE, str(ctx)],
        check=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )
    return VICTIM_IMAGE


class DefaultContainerd:
    """containerd at its default paths (/run/containerd, /var/lib/containerd),
    where the DaemonSet mounts them: the one answering there, else one of the
    test's own, stopped by pid afterwards."""

    SOCK = Path("/run/containerd/containerd.sock")

    def __init__(self, workdir: Path, oomgo: Path) -> None:
        self.daemon: Daemon | None = None
        self.ids: list[str] = []  # the containers this test made, removed by stop()
        if not self._answers():
            config = workdir / "containerd.toml"
            config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
            if self.SOCK.exists():
                self.SOCK.unlink()  # a socket no daemon answers on
            self.daemon = Daemon(
                ["containerd", "--config", str(config)], workdir / "containerd.log", self.SOCK
            )
        self.ctr(
            "images", "import", str(oci_image_tar(oomgo, workdir, "docker.io/" + VICTIM_IMAGE))
        )

    def _answers(self) -> bool:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.SOCK))
            except OSError:
                return False
        return True

    def ctr(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(
            ["ctr", "--address", str(self.SOCK), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args[:2])}: {p.stderr.strip()}")
        return p.stdout

    def stop(self) -> None:
        for cid in self.ids:
            self.ctr("tasks", "delete", "-f", cid, check=False)
            self.ctr("containers", "delete", cid, check=False)
        if self.daemon is not None:
            self.daemon.stop()
            subprocess.run(
                [
                    "pkill",
                    "-f",
                    f"containerd-shim-runc-v2 -namespace k8s.io .*-address {self.SOCK}",
                ],
                check=False,
            )


@pytest.fixture(scope="module")
def containerd(workdir: Path) -> Iterator[DefaultContainerd]:
    c = DefaultContainerd(workdir, build_oomgo(workdir))
    try:
        yield c
    finally:
        c.stop()


# -- the cluster ------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dir() -> Iterator[Path]:
    if STATE.exists() and not MARKER.exists():
        pytest.fail(f"{STATE} holds state this test did not make (a real agent's?); move it away")
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    MARKER.touch()
    try:
        yield STATE
    finally:
        shutil.rmtree(STATE, ignore_errors=True)


def _pki(workdir: Path) -> dict[str, Path]:
    """A throwaway CA and the Secrets' files (as `oomtrace certs` makes
    them), and a reader's certificate for the queries."""
    pki = workdir / "pki"
    if not (pki / "ca.crt").exists():
        tls.make_set(pki, collector_hosts=(SERVICE,), shared_agents=True, readers=("reader",))
    secrets = {
        "oomtrace-collector-tls": ("collector.crt", "collector.key", "ca.crt"),
        "oomtrace-agent-tls": ("agents.crt", "agents.key", "ca.crt"),
        "reader": ("reader.crt", "reader.key", "ca.crt"),
    }
    out = {}
    for name, files in secrets.items():
        d = workdir / "secrets" / name
        d.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(pki / f, d / f)
        out[name] = d
    return out


def _pods(overlay: str, workdir: Path, net: str) -> tuple[Pod, Pod]:
    objects = render(KUBERNETES / overlay)
    ds = find(objects, "DaemonSet", "oomtrace-agent")
    sts = find(objects, "StatefulSet", "oomtrace-collector")
    for w in (ds, sts):
        w["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {})
    secrets = _pki(workdir)
    collector = Pod(
        f"oomtrace-collector-0-{RUN}",
        sts["spec"]["template"],
        NODE,
        net,
        claims={"data": workdir / "pvc-data-oomtrace-collector-0"},
        secrets=secrets,
    )
    agent = Pod(f"oomtrace-agent-{NODE}-{RUN}", ds["spec"]["template"], NODE, net, secrets=secrets)
    return agent, collector


@pytest.fixture(scope="module")
def cluster(images: None, state_dir: Path, workdir: Path, victim_image: str) -> Iterator[Cluster]:
    version = _version()
    net = f"oomtrace-cluster-net-{RUN}"
    cluster_network(net, f"oomtrace-collector:{version}", {SERVICE: "127.0.0.1"})
    docker("update", "--restart", "no", net)
    agent, collector = _pods("base", workdir, net)
    for pod in (agent, collector):
        image = pod.container["image"]
        assert image.endswith(f":{version}"), f"{pod.name} runs {image}, the build is {version}"
    kmsg = KmsgReader()
    c = Cluster(net, collector, agent, workdir, kmsg)
    try:
        collector.run()
        c.probe(collector)
        started = time.monotonic()
        agent.run()
        c.probe(agent)
        c.notes.append(f"privileged agent ready in {time.monotonic() - started:.0f} s")
        yield c
    finally:
        for pod in (agent, collector):
            pod.remove()
        docker("rm", "-f", net, check=False)
        kmsg.close()


def docker_victim(c: Cluster, pod: str, parent: str, pod_uid: str) -> None:
    """A pod's container as cri-dockerd makes one: the kubelet's labels, the
    pod's cgroup parent, the container's memory limit."""
    args = cri_dockerd_run(
        parent, LIMIT, pod, NAMESPACE, pod_uid, "cart", {"oomtrace-test-run": RUN}
    )
    docker(*args, VICTIM_IMAGE, "grow")
    c.victims[pod] = _wait_kill(c, pod)


def containerd_victim(
    c: Cluster, containerd: DefaultContainerd, pod: str, parent: str, pod_uid: str
) -> None:
    cid = secrets.token_hex(32)
    image = "docker.io/" + VICTIM_IMAGE
    args = ["run", "-d", "--memory-limit", str(LIMIT), "--cgroup", f"{parent}/{cid}"]
    for k, v in cri_annotations(pod, NAMESPACE, pod_uid, "cart", image).items():
        args += ["--annotation", f"{k}={v}"]
    containerd.ids.append(cid)
    containerd.ctr(*args, image, cid, "/oomgo", "grow")
    c.victims[pod] = _wait_kill(c, pod)


def _wait_kill(c: Cluster, pod: str, timeout: float = 60) -> int:
    """The pid of the oomgo the kernel killed for this pod (the kernel's own
    report), a pid no earlier victim had."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        c.kmsg.read()
        for pid, k in c.kmsg.kills().items():
            if k.comm == "oomgo" and pid not in c.victims.values():
                return pid
        time.sleep(0.1)
    raise AssertionError(f"the kernel killed no oomgo for {pod}")


def _by_pod(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["pod"]["name"], []).append(r)
    return out


def assert_once_each(c: Cluster, records: list[dict[str, Any]]) -> None:
    """One record per kill the kernel reported, of that pid; none twice."""
    by_pod = _by_pod(records)
    assert set(by_pod) == set(c.victims), (
        f"records for {sorted(by_pod)}, kills in {sorted(c.victims)}"
    )
    for pod, pid in c.victims.items():
        assert len(by_pod[pod]) == 1, f"{pod}: {len(by_pod[pod])} records of one kill"
        assert by_pod[pod][0]["victim"]["pid"] == pid
    assert len({r["id"] for r in records}) == len(records)


# -- the scenario, in order ------------------------------------------------------


def test_kills_in_two_runtimes_reach_the_collector_with_their_pods(
    cluster: Cluster, containerd: DefaultContainerd
) -> None:
    with k8s_parent() as (parent, uid):
        docker_victim(cluster, "cart-docker-0", parent, uid)
    with k8s_parent() as (parent, uid):
        containerd_victim(cluster, containerd, "cart-containerd-0", parent, uid)
    records = cluster.wait_records({"cart-docker-0", "cart-containerd-0"})
    assert_once_each(cluster, records)
    for r in records:
        assert r["pod"]["namespace"] == NAMESPACE
        assert r["container"]["name"] == "cart"
        assert r["node"] == NODE
        assert r["victim"]["comm"] == "oomgo"
    # The agent is the last the kernel picks (QoS Guaranteed); the collector
    # is not root.
    agent_pid = int(docker("inspect", "-f", "{{.State.Pid}}", cluster.agent.name))
    adj = Path(f"/proc/{agent_pid}/oom_score_adj").read_text().strip()
    assert adj == ("0" if "SYS_RESOURCE" in missing_capabilities() else "-997")
    collector_pid = int(docker("inspect", "-f", "{{.State.Pid}}", cluster.collector.name))
    uids = Path(f"/proc/{collector_pid}/status").read_text().split("Uid:")[1].split()[:4]
    assert set(uids) == {"65532"}
    runtime = {r["pod"]["name"]: r["container"] for r in records}
    assert runtime["cart-docker-0"]["runtime"] == "docker"
    assert runtime["cart-docker-0"]["image"] == VICTIM_IMAGE
    assert runtime["cart-containerd-0"]["runtime"] == "containerd"
    assert runtime["cart-containerd-0"]["image"] == "docker.io/" + VICTIM_IMAGE
    cluster.note_peak(cluster.agent)


def test_agent_sigkilled_loses_nothing_and_records_nothing_twice(cluster: Cluster) -> None:
    """Two kills the agent cannot send at once: one while the collector is
    down (it waits in the spool on the node), then the agent is SIGKILLed,
    and one while no agent runs (the kernel's log has it). The restarted
    agent, the same container as a kubelet restarts it, sends both, once."""
    cluster.note_peak(cluster.collector)
    docker("stop", "--time", "30", cluster.collector.name)
    with k8s_parent() as (parent, uid):
        docker_victim(cluster, "cart-spooled-0", parent, uid)
        # On the node's disk before the agent dies.
        deadline = time.monotonic() + 30
        while not any((STATE / "spool").glob("*")):
            assert time.monotonic() < deadline, "the record never reached the spool"
            time.sleep(0.2)
        time.sleep(1)  # a record is in the spool before it is acked; let the write finish
    cluster.note_peak(cluster.agent)
    docker("kill", "--signal", "KILL", cluster.agent.name)
    with k8s_parent() as (parent, uid):
        docker_victim(cluster, "cart-unwatched-0", parent, uid)
    docker("start", cluster.collector.name)
    cluster.probe(cluster.collector)
    docker("start", cluster.agent.name)
    cluster.probe(cluster.agent)
    records = cluster.wait_records(set(cluster.victims))
    time.sleep(5)  # anything sent twice would arrive by now
    assert_once_each(cluster, cluster.history())
    (unwatched,) = _by_pod(records)["cart-unwatched-0"]
    assert unwatched["container"]["runtime"] == "docker"


def test_collector_restarted_keeps_the_history(cluster: Cluster) -> None:
    before = {r["id"] for r in cluster.history()}
    cluster.note_peak(cluster.collector)
    docker("restart", "--time", "30", cluster.collector.name)
    cluster.probe(cluster.collector)
    assert {r["id"] for r in cluster.history()} == before
    assert len(before) == len(cluster.victims)


def test_least_privilege_agent_records_a_kill(cluster: Cluster, workdir: Path) -> None:
    """The least-privilege overlay's agent (capabilities listed, not
    privileged) on the same node state, on a node without kernel headers
    (its /lib/modules is empty): the image's headers are used."""
    cluster.note_peak(cluster.agent)
    cluster.agent.remove()
    agent, _collector = _pods("overlays/least-privilege", workdir, cluster.net)
    no_headers = workdir / "node-without-headers"
    no_headers.mkdir()
    agent.overrides = {"/lib/modules": str(no_headers)}
    cluster.agent = agent
    started = time.monotonic()
    agent.run()
    cluster.probe(agent)
    cluster.notes.append(f"least-privilege agent ready in {time.monotonic() - started:.0f} s")
    output = logs(agent.name, tail=1000)
    assert "using the image's" in output
    # Whether the runtime lets a capability-listed container open /dev/kmsg
    # is the runtime's call (Docker here refuses it: no device rule); the
    # agent must run on either way, and say so.
    readable = "kmsg.unreadable" not in output
    cluster.notes.append(f"least-privilege agent reads /dev/kmsg: {readable}")
    with k8s_parent() as (parent, uid):
        docker_victim(cluster, "cart-least-privilege-0", parent, uid)
    cluster.wait_records(set(cluster.victims))
    assert_once_each(cluster, cluster.history())
    cluster.note_peak(agent)


def test_report_measured_resources(cluster: Cluster) -> None:
    """The peak memory of each container, for the manifests' resources
    (deploy/README.md); printed with -s and kept in var/deploy-resources.json."""
    cluster.note_peak(cluster.collector)
    assert cluster.peaks, "no peak memory could be read from the containers' cgroups"
    report = {name.rsplit("-", 1)[0]: round(b / (1 << 20), 1) for name, b in cluster.peaks.items()}
    print("\npeak memory (MiB):", json.dumps(report))
    for note in cluster.notes:
        print("measured:", note)
    for note in sorted(NOTES):
        print("harness:", note)
    out = REPO / "var/deploy-resources.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    # The agent never outgrew its own limit in all of the above.
    assert not json.loads(docker("inspect", "-f", "{{json .State.OOMKilled}}", cluster.agent.name))
