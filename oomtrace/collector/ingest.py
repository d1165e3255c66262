"""What the collector does with what agents send, free of gRPC: the rules
(a batch and the sender's identity in, one ack per record out) and the one
writer thread that applies them.

Every stream hands its batch to the Writer; the writer takes whatever the
other streams have queued meanwhile and stores it all in one transaction (one
fsync for many agents: in a storm a thousand agents send in the same second,
and SQLite has one writer anyway). The server bounds what is queued in bytes:
past it a stream waits for room, stops reading, and HTTP/2 flow control holds
the agent back, which keeps its records in its spool."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import structlog

from oomtrace import tls
from oomtrace.collector.errors import StoreError
from oomtrace.collector.metrics import CollectorMetrics
from oomtrace.collector.query import validate
from oomtrace.collector.store import Store
from oomtrace.v1 import collector_pb2, event_pb2

log = structlog.get_logger(__name__)

# Records stored in one transaction at most (group commit: one fsync for all).
BATCH = 512


@dataclass(slots=True)
class _Sorted:
    """One stream's batch, sorted by the rules before the store is asked."""

    acks: list[collector_pb2.IngestAck] = field(default_factory=list)
    good: list[event_pb2.OomEvent] = field(default_factory=list)
    pressure: list[event_pb2.PressureRecord] = field(default_factory=list)
    rejected_kills: int = 0
    rejected_pressure: int = 0


class IngestRules:
    """Checks records, stores the good ones, and says what became of each."""

    def __init__(
        self,
        store: Store,
        metrics: CollectorMetrics,
        publish: Callable[[list[event_pb2.OomEvent]], None] = lambda evs: None,
        on_stored: Sequence[Callable[[list[event_pb2.OomEvent]], None]] = (),
        health_of_store: Callable[[bool, str], None] = lambda ok, why: None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.publish = publish
        # Told of each record stored for the first time (Kubernetes Events);
        # each must return at once.
        self.on_stored = tuple(on_stored)
        self.health_of_store = health_of_store

    def sort(
        self, batch: Sequence[collector_pb2.IngestRequest], who: tls.Identity | None
    ) -> _Sorted:
        """who: the sender's certificate identity (None: a plaintext, local
        server), which says which nodes' records it may carry."""
        out = _Sorted()
        for req in batch:
            is_pressure = req.HasField("pressure")
            record = req.pressure if is_pressure else req.event
            reason = ""
            if who is not None and not who.node_allowed(record.node):
                # A forged node: rejected alone, the stream goes on.
                reason = f"node {record.node[:64]!r} is not this client's ({who.subject})"
                log.warning("ingest.forged_node", id=record.id[:128], reason=reason)
                self.metrics.forged.inc()
            elif is_pressure:
                if req.pressure.id and req.pressure.HasField("end"):
                    out.pressure.append(req.pressure)
                    continue
                reason = "pressure record has no id or end"
            else:
                reason = validate(req.event)
                if not reason:
                    out.good.append(req.event)
                    continue
                log.warning("ingest.rejected", id=req.event.id[:128], reason=reason)
            if is_pressure:
                out.rejected_pressure += 1
            else:
                out.rejected_kills += 1
            out.acks.append(collector_pb2.IngestAck(id=record.id[:128], rejected=reason))
        return out

    def store_all(self, sorted_batches: Sequence[_Sorted]) -> list[collector_pb2.IngestResponse]:
        """Stores the good records of several streams' batches in one
        transaction each for kills and for pressure; one response per batch,
        its acks in the order: rejected, pressure, kills. Raises StoreError
        (the store cannot write): every batch then fails, the agents resend."""
        pressure = [r for s in sorted_batches for r in s.pressure]
        good = [e for s in sorted_batches for e in s.good]
        started = time.perf_counter()
        try:
            pressure_stored = self.store.put_pressure(pressure) if pressure else []
            stored = self.store.put_many(good) if good else []
        except StoreError as exc:
            # The store cannot write (disk full, read-only): say so in health.
            self.health_of_store(False, str(exc))
            raise
        self.health_of_store(True, "")
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        new = [ev for ev, s in zip(good, stored, strict=True) if s]
        for cluster, n in Counter(ev.cluster for ev in new).items():
            self.metrics.stored_in(cluster, n)
        if new:
            self.publish(new)
            for tell in self.on_stored:
                tell(new)
        responses = []
        p_at = k_at = 0
        for s in sorted_batches:
            acks = list(s.acks)
            p_flags = pressure_stored[p_at : p_at + len(s.pressure)]
            k_flags = stored[k_at : k_at + len(s.good)]
            p_at += len(s.pressure)
            k_at += len(s.good)
            acks += [
                collector_pb2.IngestAck(id=r.id, stored=f)
                for r, f in zip(s.pressure, p_flags, strict=True)
            ]
            acks += [
                collector_pb2.IngestAck(id=e.id, stored=f)
                for e, f in zip(s.good, k_flags, strict=True)
            ]
            new_k, new_p = sum(k_flags), sum(p_flags)
            self.metrics.received("kill", new_k, len(s.good) - new_k, s.rejected_kills)
            self.metrics.received("pressure", new_p, len(s.pressure) - new_p, s.rejected_pressure)
            responses.append(collector_pb2.IngestResponse(acks=acks))
        return responses

    def apply(
        self, batch: Sequence[collector_pb2.IngestRequest], who: tls.Identity | None = None
    ) -> collector_pb2.IngestResponse:
        """One batch alone: sorted, stored, acknowledged."""
        return self.store_all([self.sort(batch, who)])[0]


@dataclass(slots=True)
class _Job:
    batch: Sequence[collector_pb2.IngestRequest]
    who: tls.Identity | None
    size: int
    done: Future[collector_pb2.IngestResponse]


class Writer:
    """The one thread that stores: jobs from every stream, as many together
    as fit in BATCH records, in one transaction. submit() never blocks: the
    caller bounds what it queues (the server's IngestBudget)."""

    def __init__(self, rules: IngestRules, batch: int = BATCH) -> None:
        self.rules = rules
        self.batch = batch
        self._jobs: deque[_Job] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="store-writer")
        self._thread.start()

    @property
    def queued_bytes(self) -> int:
        with self._cond:
            return self._bytes

    def submit(
        self, batch: Sequence[collector_pb2.IngestRequest], who: tls.Identity | None, size: int
    ) -> Future[collector_pb2.IngestResponse]:
        done: Future[collector_pb2.IngestResponse] = Future()
        with self._cond:
            if self._closed:
                done.set_exception(StoreError("the collector is stopping"))
                return done
            self._jobs.append(_Job(batch, who, size, done))
            self._bytes += size
            self._cond.notify()
        return done

    def _take(self) -> list[_Job]:
        with self._cond:
            while not self._jobs and not self._closed:
                self._cond.wait()
            jobs: list[_Job] = []
            n = 0
            while self._jobs and (not jobs or n + len(self._jobs[0].batch) <= self.batch):
                job = self._jobs.popleft()
                self._bytes -= job.size
                n += len(job.batch)
                jobs.append(job)
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if not jobs:
                return  # closed and drained
            try:
                sorted_batches = [self.rules.sort(j.batch, j.who) for j in jobs]
                responses = self.rules.store_all(sorted_batches)
            except Exception as exc:  # noqa: BLE001 - each waiting stream is told
                for j in jobs:
                    j.done.set_exception(exc)
                continue
            for j, resp in zip(jobs, responses, strict=True):
                j.done.set_result(resp)

    def close(self, timeout: float = 10) -> None:
        """Stores what is queued, then stops the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
