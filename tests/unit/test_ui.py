"""The ui's pages without a browser: a record whose every string is markup
renders as text in every part; the pprof decoder on real and broken files;
the URL filters; the server's refusals (a public bind without TLS, a
foreign Host) and its headers."""

from __future__ import annotations

import gzip
import json
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from threading import Thread

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from oomtrace.ui import filters, flame, pages, postmortem, server
from oomtrace.v1 import collector_pb2, event_pb2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HOSTILE = "<img src=x onerror=alert(1)><script>alert(2)</script>\"'&\u202e\n"


def _fill(msg: Message, depth: int = 0) -> None:
    """Every string field (and map value) set to HOSTILE, every message
    field filled in turn, one element in each repeated field."""
    for fd in msg.DESCRIPTOR.fields:
        repeated = getattr(fd, "is_repeated", False)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            getattr(msg, fd.name)[HOSTILE] = (
                HOSTILE
                if fd.message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_STRING
                else 1
            )
        elif fd.type == FieldDescriptor.TYPE_STRING:
            if repeated:
                getattr(msg, fd.name).append(HOSTILE)
            else:
                setattr(msg, fd.name, HOSTILE)
        elif fd.message_type is not None and depth < 4 and fd.message_type.name != "Timestamp":
            child = getattr(msg, fd.name).add() if repeated else getattr(msg, fd.name)
            _fill(child, depth + 1)


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _hostile_event() -> event_pb2.OomEvent:
    ev = event_pb2.OomEvent()
    _fill(ev)
    ev.id = "ab" * 16
    ev.killed_at.FromSeconds(1_790_000_000)
    ev.go.heap_profile.pprof = b"\x1f\x8bnot a profile"
    ev.go.heap_profile.buckets = 3
    ev.go.heap_profile_missing = ""
    for i, p in enumerate(ev.timeline):
        p.offset_ms, p.usage_bytes, p.limit_bytes = -1000 * (i + 1), 10, 20
    return ev


@pytest.mark.parametrize("standalone", [False, True])
def test_every_string_of_a_record_renders_as_text(standalone: bool) -> None:
    ev = _hostile_event()
    html = pages.kill_page(ev, [ev], standalone=standalone)
    p = _Tags()
    p.feed(html)
    names = [t for t, _ in p.tags]
    assert "img" not in names
    scripts = [a for t, a in p.tags if t == "script"]
    assert scripts == ([] if standalone else [[("src", "/static/ui.js"), ("defer", None)]])
    assert not [(t, a) for t, a in p.tags for k, _v in a if k.startswith("on")]
    # Shown, escaped, with its control and bidi characters spelled out.
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "\\u202e" in html
    for part in (
        "verdicts",
        "kill",
        "where",
        "memory",
        "timeline",
        "choice",
        "go",
        "heap",
        "kernel",
        "missing",
    ):
        assert f'id="{part}"' in html, part
    assert "the profile file does not decode" in html


def test_list_top_and_pressure_escape_too() -> None:
    ev = _hostile_event()
    pr = event_pb2.PressureRecord()
    _fill(pr)
    top = collector_pb2.TopResponse()
    _fill(top)
    params = {"namespace": HOSTILE, "since": HOSTILE}
    for html in (
        pages.list_page([ev], params, HOSTILE, HOSTILE),
        pages.top_page(top, "pod", params, HOSTILE),
        pages.pressure_page([pr], params, HOSTILE),
        pages.error_page(HOSTILE, 500),
    ):
        p = _Tags()
        p.feed(html)
        assert "img" not in [t for t, _ in p.tags]
        assert [a for t, a in p.tags if t == "script"] == [
            [("src", "/static/ui.js"), ("defer", None)]
        ]


def _fixture_kills() -> list[event_pb2.OomEvent]:
    (path,) = sorted(FIXTURES.glob("ui-records-*.jsonl"))[-1:]
    out = []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["kind"] == "kill":
            out.append(json_format.ParseDict(d["record"], event_pb2.OomEvent()))
    return out


def test_the_heap_profile_of_a_real_kill_decodes_to_its_sites() -> None:
    (ev,) = [k for k in _fixture_kills() if k.go.heap_profile.pprof]
    by_stack = flame.stacks(ev.go.heap_profile.pprof)
    assert by_stack
    root = flame.tree(by_stack)
    # The file holds what the runtime published at its last GC: its in-use
    # total is the record's, and its top site the record's top site's.
    assert root.value == ev.go.heap_profile.inuse_bytes
    top = ev.go.heap_profile.top[0]
    assert root.find(top.function) == top.inuse_bytes
    # Root first: main.main calls the leaking functions.
    assert all(
        s.index("main.main") < s.index(s[-1]) or s[-1] == "main.main"
        for s in by_stack
        if "main.main" in s
    )


@pytest.mark.parametrize(
    "data",
    [b"", b"\x1f\x8b", b"\x1f\x8b" + b"\x00" * 40, b"garbage", gzip.compress(b"\xff" * 100)],
)
def test_a_broken_profile_is_none(data: bytes) -> None:
    assert flame.stacks(data) is None


def test_a_profile_that_inflates_past_the_bound_is_refused() -> None:
    assert flame.stacks(gzip.compress(b"\x00" * (flame.MAX_PROFILE_BYTES + 1))) is None


def test_url_filters_map_onto_the_event_filter() -> None:
    f = filters.build(
        {
            "namespace": "shop",
            "pod": "cart-1",
            "cgroup": "/kubepods",
            "constraint": "memcg",
            "since": "1h",
        },
        now=1_790_000_000,
    )
    assert (f.namespace, f.pod, f.cgroup_prefix) == ("shop", "cart-1", "/kubepods")
    assert f.constraint == event_pb2.OomEvent.MEMCG
    assert f.since.ToSeconds() == 1_790_000_000 - 3600
    with pytest.raises(filters.FilterError, match="not a constraint"):
        filters.build({"constraint": "nope"})
    # The CLI's reading of times: journalctl's words are times, others not.
    assert filters.build({"since": "yesterday"}).HasField("since")
    with pytest.raises(filters.FilterError, match="not a time or duration"):
        filters.build({"since": "next blursday"})
    with pytest.raises(filters.FilterError, match="not after"):
        filters.build({"since": "1h", "until": "2h"})
    # Pressure records have no comm and no kind: ignored there.
    assert not filters.build({"comm": "x"}, kills=False).comm
    # Only filters the API has are offered.
    fields = collector_pb2.EventFilter.DESCRIPTOR.fields_by_name
    assert all(uf.field in fields for uf in filters.active())
    assert {"namespace", "pod", "container", "image", "node"} <= {
        uf.param for uf in filters.active()
    }
    assert (
        filters.query_string({"pod": "a b", "page": "x", "junk": "y"}, page="2") == "pod=a+b&page=2"
    )


def test_global_oom_bar_adds_up_to_the_victims_rss() -> None:
    ev = event_pb2.OomEvent()
    ev.victim.anon_rss_bytes, ev.victim.file_rss_bytes = 300, 50
    segs, usage, limit, uncharged = postmortem.memory_segments(ev)
    assert (usage, limit, uncharged) == (350, 0, 0)
    assert sum(s.nbytes for s in segs) == 350


def test_a_public_bind_needs_tls() -> None:
    c = server.Collector("127.0.0.1:1", grpc.insecure_channel("127.0.0.1:1"))
    with pytest.raises(server.UiError, match="not a loopback address"):
        server.create_server("0.0.0.0:0", c)
    with pytest.raises(server.UiError, match="together"):
        server.create_server("127.0.0.1:0", c, cert=Path("x"))


def test_only_its_own_host_is_answered_with_the_headers() -> None:
    c = server.Collector("127.0.0.1:1", grpc.insecure_channel("127.0.0.1:1"))
    srv, port = server.create_server("127.0.0.1:0", c)
    Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ok = urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert ok.status == 200
        assert "script-src 'self'" in ok.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in ok.headers["Content-Security-Policy"]
        assert ok.headers["X-Content-Type-Options"] == "nosniff"
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/healthz", headers={"Host": "evil.example:80"}
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 421
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/static/../../etc/passwd", timeout=5)
        assert e.value.code == 404
        # The collector is not there: a page says so, it does not hang or crash.
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/kill/abc", timeout=40)
        assert e.value.code == 502
        assert "collector unreachable" in e.value.read().decode()
    finally:
        srv.shutdown()
        srv.server_close()
