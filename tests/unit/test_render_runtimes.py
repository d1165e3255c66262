"""show's runtime section, on a real record: java -Xmx1g OOM-killed in a
256 MiB cgroup (OpenJDK 17, this host's kernel)."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from oomtrace import render
from oomtrace.v1 import event_pb2

RECORD = Path(__file__).parent.parent / "fixtures" / "record-jvm-kill-6.18.44-fc-v1272.json"


def test_a_jvm_kill_has_its_runtime_section() -> None:
    """The JVM, its flags with their sources, the heap HotSpot counted, and
    the verdict with the -Xmx that fits."""
    ev = json_format.ParseDict(json.loads(RECORD.read_text()), event_pb2.OomEvent())
    text = render.report(ev, ev.killed_at.ToNanoseconds() / 1e9 + 60)
    assert "JVM_HEAP_MAX_ABOVE_LIMIT" in text
    assert "→ Set -Xmx" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ") and ln.split()}
    assert "Debian 17.0.15" in lines["jvm"]
    assert "-Xmx1g (command line)" in lines["flags"]
    assert "-XX:MaxDirectMemorySize=64m (JAVA_TOOL_OPTIONS)" in lines["flags"]
    assert lines["max"].startswith("  max heap    1024.0 MiB")
    assert "Copy:MSC" in lines["heap"]
    assert "Serial young collection pauses" in lines["gc"]
