"""`oomtrace ui` in a real browser (Debian's Chromium driven by Playwright)
over a real collector holding real kills: records made by real kills of each
shape (tests/integration/ui_kills.py, kept by tools/capture-ui-records.py)
stored into the session agent's collector, and one live kill, which must
appear in an open list without a reload. Each page's screenshot is kept in
var/ui-screenshots/ (a test artifact). The HTML export is opened in the same
browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from google.protobuf import json_format

from oomtrace.v1 import collector_pb2, collector_pb2_grpc, event_pb2
from tests.integration import ui_kills
from tests.integration.harness import (
    OOMTRACE,
    REPO,
    AgentProcess,
    CollectorProcess,
    free_port,
    wait_until,
)

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
SCREENSHOTS = REPO / "var" / "ui-screenshots"
FIXTURES = REPO / "tests" / "fixtures"

playwright = pytest.importorskip("playwright.sync_api", reason="pip playwright (make setup)")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (make setup)"
)


def fixture_records() -> tuple[list[event_pb2.OomEvent], list[event_pb2.PressureRecord]]:
    """The newest capture (any kernel's: the ui draws records, whatever made them)."""
    (path,) = sorted(FIXTURES.glob("ui-records-*.jsonl"))[-1:]
    kills, pressure = [], []
    for line in path.read_text().splitlines():
        d = json.loads(line)
        if d["kind"] == "kill":
            kills.append(json_format.ParseDict(d["record"], event_pb2.OomEvent()))
        else:
            pressure.append(json_format.ParseDict(d["record"], event_pb2.PressureRecord()))
    return kills, pressure


def ingest(
    addr: str, kills: list[event_pb2.OomEvent], pressure: list[event_pb2.PressureRecord]
) -> None:
    """Through the agents' own IngestService: the collector stores them as
    it stores any agent's."""
    reqs = [collector_pb2.IngestRequest(event=e) for e in kills]
    reqs += [collector_pb2.IngestRequest(pressure=p) for p in pressure]
    with grpc.insecure_channel(addr) as ch:
        acks = [
            a for r in collector_pb2_grpc.IngestServiceStub(ch).Ingest(iter(reqs)) for a in r.acks
        ]
    assert len(acks) == len(reqs), acks
    assert not [a for a in acks if a.rejected], acks


class Ui:
    """`oomtrace ui` as a subprocess, on a free port."""

    def __init__(self, collector: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [str(OOMTRACE), "ui", "--collector", collector, "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        wait_until(self._up, 30, "oomtrace ui serving")

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Browser:
    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def open(self, url: str) -> Any:
        self.page.goto(url)
        return self.page

    def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        # Root in CI: Chromium's sandbox needs a user namespace it cannot have.
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def browser(chromium: Any) -> Iterator[Browser]:
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    b = Browser(page)
    page.on("console", lambda m: b.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: b.errors.append(str(e)))

    def dialog(d: Any) -> None:
        b.dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    yield b
    ctx.close()
    assert not b.dialogs, f"a record's text ran as script: {b.dialogs}"
    assert not b.errors, f"console errors: {b.errors}"


@dataclass
class Stack:
    ui: Ui
    kills: list[event_pb2.OomEvent]
    pressure: list[event_pb2.PressureRecord]
    collector: str

    def kill(self, pred: Any) -> event_pb2.OomEvent:
        return next(k for k in self.kills if pred(k))


@pytest.fixture(scope="module")
def stack(agent: AgentProcess) -> Iterator[Stack]:
    kills, pressure = fixture_records()
    ingest(agent.collector_addr, kills, pressure)
    ui = Ui(agent.collector_addr)
    try:
        yield Stack(ui, kills, pressure, agent.collector_addr)
    finally:
        ui.stop()


def test_the_list_shows_the_kills_and_a_new_one_without_reload(
    stack: Stack, browser: Browser, agent: AgentProcess
) -> None:
    page = browser.open(f"{stack.ui.url}/?since=30d&limit=10000")
    for ev in stack.kills:
        assert page.locator(f'tr[data-id="{ev.id}"]').count() == 1, ev.id
    page.wait_for_selector("#live.ok", timeout=15000)
    pid = ui_kills.plain_kill()
    (rec,) = agent.take(1, where=lambda r: r["victim"]["pid"] == pid)
    row = page.wait_for_selector(f'tr.new[data-id="{rec["id"]}"]', timeout=30000)
    assert f"[{pid}]" in row.inner_text()
    # The new row is on top, and the page was not reloaded to show it.
    assert page.locator("#kills tr").first.get_attribute("data-id") == rec["id"]
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    browser.shot("list")


def test_a_kill_page_draws_its_timeline_and_its_figures_add_up(
    stack: Stack, browser: Browser
) -> None:
    ev = max(stack.kills, key=lambda k: len(k.timeline))
    page = browser.open(f"{stack.ui.url}/kill/{ev.id[:12]}")
    sampled = [p for p in ev.timeline if not p.missed]
    assert len(sampled) >= 10
    points = page.locator("svg.timeline circle.pt")
    assert points.count() == len(sampled)
    got = [int(points.nth(i).get_attribute("data-usage-bytes")) for i in range(points.count())]
    assert got == [p.usage_bytes for p in sampled]
    # Drawn: the usage line has a length on screen, the last point is
    # right of the first, and the limit line is there.
    box_first, box_last = points.first.bounding_box(), points.last.bounding_box()
    assert box_last["x"] > box_first["x"] + 300
    assert page.locator("svg.timeline path.limit").count() == 1
    # The bar: its parts add up to the cgroup's usage, headroom to the limit.
    wrap = page.locator(".membar-wrap")
    usage = int(wrap.get_attribute("data-usage-bytes"))
    limit = int(wrap.get_attribute("data-limit-bytes"))
    assert usage == (ev.cgroup.oom_memcg_usage_bytes or ev.cgroup.memory_usage_bytes)
    assert limit == (ev.cgroup.oom_memcg_limit_bytes or ev.cgroup.memory_limit_bytes)
    parts = {
        s.get_attribute("data-part"): int(s.get_attribute("data-bytes"))
        for s in wrap.locator("rect.seg[data-part]").all()
    }
    assert sum(v for k, v in parts.items() if k != "headroom") == usage, parts
    assert parts.get("victim anon") == min(ev.victim.anon_rss_bytes, usage)
    assert sum(parts.values()) == max(limit, usage)
    # Sections in order: the kill before the raw report, the raw report's lines kept.
    ids = page.eval_on_selector_all("section.part", "els => els.map(e => e.id)")
    assert ids.index("kill") < ids.index("memory") < ids.index("timeline") < ids.index("kernel")
    assert "invoked oom-killer" in page.locator("pre.raw").inner_text().splitlines()[0]
    browser.shot("kill-timeline")


def test_verdicts_come_first_and_the_candidates_are_ranked(stack: Stack, browser: Browser) -> None:
    ev = stack.kill(lambda k: any(v.code == "VICTIM_CHOSEN_BY_OOM_SCORE_ADJ" for v in k.verdicts))
    page = browser.open(f"{stack.ui.url}/kill/{ev.id}")
    assert page.eval_on_selector_all("section.part", "els => els[0].id") == "verdicts"
    rows = page.locator("table.choice tbody tr")
    assert rows.count() == len(ev.choice.candidates) >= 2
    assert rows.first.inner_text().startswith("→")
    browser.shot("kill-choice")


def test_the_flame_graph_shows_the_leaking_function(stack: Stack, browser: Browser) -> None:
    ev = stack.kill(lambda k: k.HasField("go") and k.go.heap_profile_before.buckets)
    page = browser.open(f"{stack.ui.url}/kill/{ev.id}")
    flames = page.locator("#heap svg.flame")
    assert flames.count() == 3  # at the kill, before, and the growth
    at_kill, before, grew = (flames.nth(i) for i in range(3))

    def bytes_of(svg: Any, fn: str) -> int:
        return sum(
            int(g.get_attribute("data-bytes"))
            for g in svg.locator(f'g.fr[data-function="{fn}"]').all()
        )

    root = int(at_kill.locator("g.fr").first.get_attribute("data-bytes"))
    # leakgo phases: leakAlpha kept 24 MiB, then only leakBeta grew.
    assert bytes_of(at_kill, "main.leakBeta") > 0.3 * root
    assert bytes_of(at_kill, "main.leakAlpha") > 0.2 * root
    grew_root = int(grew.locator("g.fr").first.get_attribute("data-bytes"))
    assert bytes_of(grew, "main.leakBeta") > 0.8 * grew_root
    assert bytes_of(before, "main.leakAlpha") > bytes_of(before, "main.leakBeta")
    # Its width on screen is its share.
    beta = at_kill.locator('g.fr[data-function="main.leakBeta"] rect').first.bounding_box()
    whole = at_kill.locator("g.fr rect").first.bounding_box()
    share = bytes_of(at_kill, "main.leakBeta") / root
    assert abs(beta["width"] / whole["width"] - share) < 0.02
    assert page.locator("#heap table.sites").first.inner_text().count("main.leakBeta") == 1
    browser.shot("kill-go-heap")


def test_a_cgroup_named_with_markup_renders_as_text(stack: Stack, browser: Browser) -> None:
    ev = stack.kill(lambda k: ui_kills.HOSTILE_NAME in k.cgroup.path)
    for url in (
        f"{stack.ui.url}/kill/{ev.id}",
        f"{stack.ui.url}/?since=30d&limit=10000",
        f"{stack.ui.url}/top?by=cgroup&since=30d&cgroup={quote(ev.cgroup.path)}",
    ):
        page = browser.open(url)
        assert ui_kills.HOSTILE_NAME in page.locator("main").inner_text()
        # Our one script, nothing from the record.
        assert page.evaluate("[...document.scripts].map(s => s.src)") == [
            f"{stack.ui.url}/static/ui.js"
        ]
    browser.shot("kill-hostile-name")


def test_userspace_kill_names_its_killer(stack: Stack, browser: Browser) -> None:
    ev = stack.kill(lambda k: k.source == event_pb2.OomEvent.USERSPACE)
    page = browser.open(f"{stack.ui.url}/kill/{ev.id}")
    text = page.locator("#kill").inner_text()
    assert "earlyoom" in text
    assert "userspace OOM killer" in text
    assert page.locator('.verdict[data-code="USERSPACE_OOM_KILL"]').count() == 1
    browser.shot("kill-userspace")


def test_top_and_pressure_pages(stack: Stack, browser: Browser) -> None:
    # The session's collector holds every earlier test's kills too: each of
    # ours is asked for by its cgroup, so a page of 25 rows still shows it.
    for ev in stack.kills:
        page = browser.open(
            f"{stack.ui.url}/top?by=cgroup&since=30d&cgroup={quote(ev.cgroup.path)}"
        )
        assert ev.cgroup.path in page.locator("table.top").inner_text()
    browser.shot("top")
    (pr,) = stack.pressure[:1]
    page = browser.open(f"{stack.ui.url}/pressure?since=30d&cgroup={pr.cgroup}")
    assert page.locator("table.pressure tbody tr").count() >= 1
    assert pr.cgroup in page.locator("table.pressure").inner_text()
    assert page.locator("svg.windows rect.window, svg.windows rect.stall").count() >= 1
    browser.shot("pressure")


def test_a_bad_filter_is_said_on_the_page(stack: Stack, browser: Browser) -> None:
    page = browser.open(f"{stack.ui.url}/?since=yesterday-ish")
    assert "not a time or duration" in page.locator("p.error").inner_text()
    browser.errors.clear()  # the 400 itself is logged by the browser


def test_the_html_export_opens_in_the_browser(
    stack: Stack, browser: Browser, tmp_path: Path
) -> None:
    ev = stack.kill(lambda k: k.HasField("go") and k.go.heap_profile_before.buckets)
    out = tmp_path / "kill.html"
    with out.open("w") as f:
        subprocess.run(
            [str(OOMTRACE), "show", ev.id[:12], "-o", "html", "--collector", stack.collector],
            stdout=f,
            check=True,
        )
    page = browser.open(out.as_uri())
    assert page.evaluate("document.scripts.length") == 0
    assert page.evaluate("document.styleSheets.length") == 1
    assert page.locator("#heap svg.flame").count() == 3
    assert page.locator('#heap g.fr[data-function="main.leakBeta"]').count() >= 1
    # Styled without the ui: the usage line is drawn in its colour.
    stroke = page.eval_on_selector("svg.timeline path.usage", "e => getComputedStyle(e).stroke")
    assert stroke == "rgb(47, 111, 223)"
    assert not page.locator("a[href^='/']").count()
    browser.shot("export")


def test_the_list_reconnects_when_the_collector_restarts(browser: Browser, tmp_path: Path) -> None:
    """A collector of its own, killed and started again on the same store:
    the page says so, then shows a record stored after the restart."""
    kills, _ = fixture_records()
    first, later = kills[0], kills[-1]
    port = free_port()
    collector = CollectorProcess(tmp_path / "c.db", port)
    ui = Ui(collector.addr)
    try:
        ingest(collector.addr, [first], [])
        page = browser.open(f"{ui.url}/?since=30d")
        page.wait_for_selector("#live.ok", timeout=15000)
        collector.kill()
        page.wait_for_selector("#live.down", timeout=15000)
        collector = CollectorProcess(tmp_path / "c.db", port)
        page.wait_for_selector("#live.ok", timeout=30000)
        # A real record, re-timed: watchers are matched by kill time, and a
        # kill from before the page opened is listed on a reload, not live.
        fresh = event_pb2.OomEvent()
        fresh.CopyFrom(later)
        fresh.killed_at.FromNanoseconds(time.time_ns())
        ingest(collector.addr, [fresh], [])
        page.wait_for_selector(f'tr.new[data-id="{fresh.id}"]', timeout=30000)
    finally:
        ui.stop()
        collector.kill()
