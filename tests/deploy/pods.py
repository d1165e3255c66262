"""A rendered pod template, run as a container of the host's engine exactly
as the manifest says: its image, args, env, hostPID, securityContext,
resources' limits and volumes (hostPath, emptyDir, the StatefulSet's claim).
No cluster can run here; this is the part of a kubelet the deploy test needs.

What a field means and how it is carried over is in `docker_run_args`; a
field this does not know is an error, so a manifest cannot use something the
test silently leaves out. Every pod joins one network namespace (the
"cluster network"), in which the Service's name resolves to the collector."""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DOCKER = ["/usr/bin/docker", "-H", "unix:///run/docker.sock"]

# What of a pod spec and a container this harness carries over; the rest are
# scheduling and API-server matters with no meaning on one engine (they are
# validated offline by tests/unit/test_manifests.py).
POD_FIELDS_CARRIED = {
    "containers",
    "hostPID",
    "volumes",
    "securityContext",
    "serviceAccountName",  # no API server: the token is off in every manifest
    "automountServiceAccountToken",
}
POD_FIELDS_IGNORED = {
    "priorityClassName",
    "nodeSelector",
    "tolerations",
    "terminationGracePeriodSeconds",
}
CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "args",
    "env",
    "ports",
    "securityContext",
    "resources",
    "volumeMounts",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
}


# linux/capability.h, by bit.
CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
# What the harness could not carry as written, said once per run.
NOTES: set[str] = set()


class HarnessError(Exception):
    pass


@functools.cache
def engine_knows(cap: str, image: str) -> bool:
    """Whether the engine takes this capability's name (it checks names
    against its own list when a container is created)."""
    probe = f"oomtrace-cap-probe-{cap.lower()}"
    p = subprocess.run(
        [*DOCKER, "create", "--name", probe, "--cap-add", cap, image],
        capture_output=True,
        text=True,
    )
    docker("rm", "--force", probe, check=False)
    return p.returncode == 0


def missing_capabilities() -> list[str]:
    """Capabilities this machine's bounding set lacks: no container here can
    have them (this VM's has no SYS_RESOURCE), privileged or not."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            bounding = int(line.split()[1], 16)
            return [name for bit, name in enumerate(CAPABILITIES) if not bounding >> bit & 1]
    return []


def docker(*args: str, check: bool = True, timeout: float = 300) -> str:
    p = subprocess.run(
        [*DOCKER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if check and p.returncode != 0:
        raise HarnessError(f"docker {' '.join(args[:3])}...: {p.stderr.strip()}")
    return p.stdout.strip()


def _quantity_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, mult in units.items():
        if q.endswith(suffix):
            return int(q[: -len(suffix)]) * mult
    return int(q)


def _cpus(q: str) -> str:
    return str(int(q[:-1]) / 1000) if q.endswith("m") else q


@dataclass
class Pod:
    """One pod of a rendered workload on this node."""

    name: str
    template: dict[str, Any]
    node_name: str
    network: str  # the container whose network namespace every pod joins
    claims: dict[str, Path] = field(default_factory=dict)  # claim name -> host dir
    secrets: dict[str, Path] = field(default_factory=dict)  # secret name -> dir of its keys
    overrides: dict[str, str] = field(default_factory=dict)  # hostPath -> another

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.template["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.spec["containers"]
        c: dict[str, Any] = container
        return c

    def docker_run_args(self) -> list[str]:
        unknown = set(self.spec) - POD_FIELDS_CARRIED - POD_FIELDS_IGNORED
        unknown |= set(self.container) - CONTAINER_FIELDS
        if unknown:
            raise HarnessError(f"{self.name}: the harness does not carry {sorted(unknown)}")
        c = self.container
        args = ["--name", self.name, "--network", f"container:{self.network}"]
        if self.spec.get("hostPID"):
            args += ["--pid", "host"]
        for env in c.get("env", []):
            if "value" in env:
                args += ["--env", f"{env['name']}={env['value']}"]
            elif env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
                args += ["--env", f"{env['name']}={self.node_name}"]
            else:
                raise HarnessError(f"{self.name}: env {env['name']} is not carried")
        args += self._security()
        resources = c.get("resources", {})
        limits = resources.get("limits", {})
        if (
            limits
            and resources.get("requests", limits) == limits
            and {"cpu", "memory"} <= set(limits)
        ):
            # What the kubelet does for QoS Guaranteed. Lowering it needs
            # CAP_SYS_RESOURCE, which some machines' bounding set lacks.
            if "SYS_RESOURCE" in missing_capabilities():
                NOTES.add("oom_score_adj -997 (QoS Guaranteed): not carried, needs SYS_RESOURCE")
            else:
                args += ["--oom-score-adj", "-997"]
        if "memory" in limits:
            mem = _quantity_bytes(limits["memory"])
            args += ["--memory", str(mem), "--memory-swap", str(mem)]
        if "cpu" in limits:
            args += ["--cpus", _cpus(limits["cpu"])]
        args += self._volumes()
        return [*args, c["image"], *c.get("args", [])]

    def _security(self) -> list[str]:
        pod_sc = self.spec.get("securityContext", {})
        sc = {**pod_sc, **self.container.get("securityContext", {})}
        args: list[str] = []
        missing = missing_capabilities()
        if sc.get("privileged") and missing:
            # runc refuses --privileged where the bounding set lacks a
            # capability. The same, less those: every other capability, every
            # device, no seccomp, AppArmor or masked /proc and /sys paths.
            NOTES.add(f"privileged: carried as every capability but {', '.join(missing)}")
            args += ["--cap-add", "ALL", "--device-cgroup-rule", "a *:* rwm"]
            for cap in missing:
                args += ["--cap-drop", cap]
            for opt in ("seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"):
                args += ["--security-opt", opt]
        elif sc.get("privileged"):
            args.append("--privileged")
        caps = sc.get("capabilities", {})
        for cap in caps.get("drop", []):
            args += ["--cap-drop", cap]
        for cap in caps.get("add", []):
            if cap in missing:
                NOTES.add(f"capability {cap}: not carried, this machine's bounding set lacks it")
            elif not engine_knows(cap, self.container["image"]):
                # Docker 20.10 predates BPF and PERFMON; SYS_ADMIN, which
                # the overlay lists too, allows what they do on every kernel.
                NOTES.add(f"capability {cap}: not carried, this engine does not know it")
            else:
                args += ["--cap-add", cap]
        if "runAsUser" in sc:
            args += ["--user", f"{sc['runAsUser']}:{sc.get('runAsGroup', sc['runAsUser'])}"]
        if "fsGroup" in sc:
            args += ["--group-add", str(sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        seccomp = sc.get("seccompProfile", {}).get("type")
        if seccomp == "Unconfined":
            args += ["--security-opt", "seccomp=unconfined"]
        elif seccomp not in (None, "RuntimeDefault"):
            raise HarnessError(f"{self.name}: seccomp {seccomp} is not carried")
        apparmor = sc.get("appArmorProfile", {}).get("type")
        if apparmor == "Unconfined":
            args += ["--security-opt", "apparmor=unconfined"]
        return args

    def _volumes(self) -> list[str]:
        volumes = {v["name"]: v for v in self.spec.get("volumes", [])}
        fs_group = self.spec.get("securityContext", {}).get("fsGroup")
        args: list[str] = []
        for m in self.container.get("volumeMounts", []):
            ro = ",readonly" if m.get("readOnly") else ""
            if m["name"] in self.claims:
                src = self.claims[m["name"]]
                src.mkdir(parents=True, exist_ok=True)
                if fs_group is not None:  # what the kubelet does for a claim
                    os.chown(src, -1, fs_group)
                    src.chmod(0o2775)
                args += ["--mount", f"type=bind,source={src},target={m['mountPath']}{ro}"]
                continue
            v = volumes[m["name"]]
            if "hostPath" in v:
                path = self.overrides.get(v["hostPath"]["path"], v["hostPath"]["path"])
                kind = v["hostPath"].get("type", "")
                if kind == "DirectoryOrCreate":
                    Path(path).mkdir(parents=True, exist_ok=True)
                elif kind == "Directory" and not Path(path).is_dir():
                    raise HarnessError(f"hostPath {path} is not a directory")
                elif kind == "CharDevice" and not Path(path).is_char_device():
                    raise HarnessError(f"hostPath {path} is not a character device")
                args += ["--mount", f"type=bind,source={path},target={m['mountPath']}{ro}"]
            elif "secret" in v:
                args += [
                    "--mount",
                    f"type=bind,source={self._secret(v)},target={m['mountPath']}{ro}",
                ]
            elif "emptyDir" in v:
                size = v["emptyDir"].get("sizeLimit")
                opts = f",tmpfs-size={_quantity_bytes(size)}" if size else ""
                args += ["--mount", f"type=tmpfs,target={m['mountPath']}{opts}"]
            else:
                raise HarnessError(f"{self.name}: volume {m['name']} is not carried")
        return args

    def _secret(self, volume: dict[str, Any]) -> Path:
        """The secret's keys as files, as the kubelet writes them: mode
        defaultMode, group fsGroup when the pod has one."""
        name = volume["secret"]["secretName"]
        if name not in self.secrets:
            raise HarnessError(f"{self.name}: no files given for Secret {name}")
        out = self.secrets[name].parent / f"{self.name}-{volume['name']}"
        out.mkdir(exist_ok=True)
        mode = volume["secret"].get("defaultMode", 0o644)
        group = self.spec.get("securityContext", {}).get("fsGroup", 0)
        for f in self.secrets[name].iterdir():
            (out / f.name).write_bytes(f.read_bytes())
            os.chown(out / f.name, 0, group)
            (out / f.name).chmod(mode)
        return out

    def run(self) -> str:
        """Creates and starts the container; its id."""
        return docker("run", "--detach", *self.docker_run_args())

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


def logs(container: str, tail: int = 40) -> str:
    """A container's output, both streams (docker logs splits them again)."""
    p = subprocess.run(
        [*DOCKER, "logs", "--tail", str(tail), container], capture_output=True, text=True
    )
    return p.stdout + p.stderr


def cluster_network(name: str, image: str, hosts: dict[str, str]) -> str:
    """A container that only holds a network namespace (loopback only), with
    the Services' names in its hosts file; pods join it."""
    args = ["run", "--detach", "--name", name, "--network", "none", "--entrypoint", "sleep"]
    for host, address in hosts.items():
        args += ["--add-host", f"{host}:{address}"]
    return docker(*args, image, "infinity")


def netns_pid(container: str) -> int:
    return int(docker("inspect", "-f", "{{.State.Pid}}", container))


def in_netns(pid: int, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs a host program inside a pod network's namespace (a probe)."""
    return subprocess.run(
        ["nsenter", f"--net=/proc/{pid}/ns/net", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
