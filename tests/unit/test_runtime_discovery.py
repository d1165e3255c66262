"""Which processes are JVMs or Node, from a /proc tree laid out as the
kernel does (root, exe, maps, environ): a java launcher of any vendor, a
JVM embedded in another program, Node with its version in its binary or in
Debian's libnode."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.runtimes.jvm import discovery as jvm
from oomtrace.agent.runtimes.nodejs import discovery as node


def _proc(tmp_path: Path, pid: int, environ: bytes = b"", maps: str = "") -> Path:
    proc = tmp_path / "proc"
    d = proc / str(pid)
    (d / "root").mkdir(parents=True)
    (d / "environ").write_bytes(environ)
    (d / "maps").write_text(maps)
    return proc


def _jdk(root: Path, home: str, release: str) -> None:
    h = root / home.lstrip("/")
    (h / "lib/server").mkdir(parents=True)
    (h / "lib/server/libjvm.so").write_bytes(b"\x7fELF")
    (h / "release").write_text(release)


def test_a_java_launcher_of_any_vendor(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 5, b"JAVA_TOOL_OPTIONS=-Xmx300m\0SECRET=x\0")
    _jdk(
        proc / "5/root", "/opt/zulu21", 'IMPLEMENTOR="Azul Systems, Inc."\nJAVA_VERSION="21.0.4"\n'
    )
    j = jvm.discover(5, "/opt/zulu21/bin/java", ["java", "-jar", "app.jar"], proc)
    assert j is not None
    assert (j.vendor, j.version, j.detected_by) == ("Azul Systems, Inc.", "21.0.4", "java launcher")
    assert j.flags.flags["MaxHeapSize"].value == "300m"
    assert j.env == {"JAVA_TOOL_OPTIONS": "-Xmx300m"}  # nothing else of the environment


def test_an_embedded_jvm_by_its_mapping(tmp_path: Path) -> None:
    maps = "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/jvm/jdk-8/jre/lib/amd64/server/libjvm.so\n"
    proc = _proc(tmp_path, 6, b"_JAVA_OPTIONS=-Xmx64m\0", maps)
    _jdk(proc / "6/root", "/usr/lib/jvm/jdk-8", 'JAVA_VERSION="1.8.0_402"\n')
    assert jvm.discover(6, "/opt/app/server", ["server"], proc) is None  # not without maps
    j = jvm.discover(6, "/opt/app/server", ["server", "-Xmx9g"], proc, maps=True)
    assert j is not None
    assert j.detected_by == "libjvm.so mapping"
    assert j.java_home == "/usr/lib/jvm/jdk-8"
    # the JNI options cannot be seen; the environment's still apply
    assert j.flags.flags["MaxHeapSize"].value == "64m"
    assert j.flags.missing


def test_not_a_jvm(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 7)
    assert jvm.discover(7, "/usr/bin/java", ["java"], proc) is None  # no JDK beside it
    assert jvm.discover(7, "/usr/bin/python3", ["python3"], proc, maps=True) is None


def test_node_version_from_its_binary_or_libnode(tmp_path: Path) -> None:
    proc = _proc(tmp_path, 8, b"NODE_OPTIONS=--max-old-space-size=200\0")
    exe = proc / "8" / "exe"
    exe.write_bytes(
        b"\0" * 1000 + b"https://nodejs.org/download/release/v22.11.0/node-v22.11.0.tar.gz\0"
    )
    n = node.discover(8, "/usr/local/bin/node", ["node", "app.js"], node.VersionCache(), proc)
    assert n is not None
    assert n.version == "v22.11.0"
    assert n.flags["max-old-space-size"].value == "200"
    # Debian's: a small node binary linking libnode.so.108
    proc2 = _proc(tmp_path / "b", 9)
    (proc2 / "9" / "exe").write_bytes(b"\x7fELF small")
    lib = proc2 / "9/root/usr/lib/x86_64-linux-gnu"
    lib.mkdir(parents=True)
    (lib / "libnode.so.108").write_bytes(b"x" * 100 + b"node-v18.19.0-headers.tar.gz")
    n2 = node.discover(9, "/usr/bin/nodejs", ["nodejs"], node.VersionCache(), proc2)
    assert n2 is not None
    assert n2.version == "v18.19.0"
    assert node.discover(9, "/usr/bin/python3", ["python3"], node.VersionCache(), proc2) is None
