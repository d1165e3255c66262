"""The agent's durable spool: every record is written here (and fsynced)
before it goes anywhere else, and deleted only when the collector has
acknowledged it. Pending records survive the agent being killed, the
collector being down, and reboots. Bounded; overflow is counted and logged.

One agent per spool: a second one would send and delete the first one's
records, so the directory is locked (flock) for the spool's life. Each file
carries a CRC32 of its record, so a torn or rotten file is set aside, not
sent. A full disk does not lose a record: it is kept in memory (counted as
`unwritten`, sent like the others) until the collector has it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import structlog
from google.protobuf.message import DecodeError

from oomtrace.v1 import collector_pb2, event_pb2

log = structlog.get_logger(__name__)

_SUFFIX = ".rec"
# A record file: magic, CRC32 of the record, the record. Files without the
# magic were written before checksums and are read as they are.
_MAGIC = b"OOMT\x01"
_HEADER = struct.Struct("<5sI")


class SpoolLockedError(OSError):
    """Another agent (or spool) already uses this directory."""


def lock_directory(directory: Path, what: str) -> int:
    """Holds an exclusive lock on directory for as long as the returned fd is
    open (the process's life, at the latest); raises SpoolLockedError naming
    the pid that holds it."""
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SpoolLockedError(
            errno.EBUSY,
            f"another oomtrace agent (pid {holder}) uses {what} at {directory}: give each "
            "agent its own --state-dir (and --spool)",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _frame(data: bytes) -> bytes:
    return _HEADER.pack(_MAGIC, zlib.crc32(data)) + data


def _unframe(blob: bytes) -> bytes:
    if not blob.startswith(_MAGIC):
        return blob  # from before checksums
    _magic, crc = _HEADER.unpack_from(blob)
    data = blob[_HEADER.size :]
    if zlib.crc32(data) != crc:
        raise ValueError("checksum mismatch: the file is torn or corrupt")
    return data


@dataclass(frozen=True, slots=True)
class Entry:
    seq: int
    request: collector_pb2.IngestRequest

    @property
    def id(self) -> str:
        return request_id(self.request)


def request_id(req: collector_pb2.IngestRequest) -> str:
    return req.event.id if req.HasField("event") else req.pressure.id


class Spool:
    def __init__(
        self, directory: Path, max_records: int = 100_000, max_bytes: int = 256 << 20
    ) -> None:
        self.dir = directory
        self.max_records = max_records
        self.max_bytes = max_bytes
        self.overflowed = 0
        self.corrupt = 0
        self.unwritten = 0  # kept in memory only: the disk was full
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: OrderedDict[int, tuple[collector_pb2.IngestRequest, int]] = OrderedDict()
        self._seq_by_id: dict[str, int] = {}
        self._bytes = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = lock_directory(self.dir, "the spool")
        self._next_seq = self._load() + 1

    def close(self) -> None:
        """Releases the directory for another spool."""
        with contextlib.suppress(OSError):
            os.close(self._lock_fd)

    def _load(self) -> int:
        last = 0
        for path in sorted(self.dir.glob(f"*{_SUFFIX}")):
            try:
                seq = int(path.stem)
                ev = collector_pb2.IngestRequest()
                ev.ParseFromString(_unframe(path.read_bytes()))
                if not request_id(ev):
                    raise ValueError("no record in it")
            except (ValueError, DecodeError, OSError) as exc:
                # Keep it for a person to look at; never delete what we cannot read.
                self.corrupt += 1
                aside = self.dir / "corrupt"
                aside.mkdir(exist_ok=True)
                path.rename(aside / path.name)
                log.error(
                    "spool.corrupt_record", path=str(path), error=str(exc), moved_to=str(aside)
                )
                continue
            size = path.stat().st_size
            self._entries[seq] = (ev, size)
            self._seq_by_id[request_id(ev)] = seq
            self._bytes += size
            last = max(last, seq)
        for tmp in self.dir.glob("*.tmp"):
            tmp.unlink()  # a write the agent died in the middle of; never acknowledged
        if self._entries:
            log.info("spool.replaying", pending=len(self._entries), dir=str(self.dir))
        return last

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def put(self, ev: event_pb2.OomEvent) -> bool:
        """Writes a kill record durably; False (counted, logged) when full."""
        return self._put(collector_pb2.IngestRequest(event=ev), share=1.0)

    def put_pressure(self, rec: event_pb2.PressureRecord) -> bool:
        """Pressure records may use half the spool: the rest is kept for kills."""
        return self._put(collector_pb2.IngestRequest(pressure=rec), share=0.5)

    def _put(self, req: collector_pb2.IngestRequest, share: float) -> bool:
        data = req.SerializeToString()
        ident = request_id(req)
        with self._lock:
            if (
                len(self._entries) >= self.max_records * share
                or self._bytes + len(data) > self.max_bytes * share
            ):
                self.overflowed += 1
                log.error(
                    "spool.full",
                    id=ident,
                    kind="pressure" if share < 1 else "kill",
                    pending=len(self._entries),
                    bytes=self._bytes,
                    overflowed=self.overflowed,
                )
                return False
            seq = self._next_seq
            self._next_seq += 1
        path = self.dir / f"{seq:020d}{_SUFFIX}"
        tmp = path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(_frame(data))
                f.flush()
                os.fsync(f.fileno())
            tmp.rename(path)
            self._fsync_dir()
        except OSError as exc:
            # The disk is full (or failing): keep the record in memory, where
            # the exporter sends it all the same; only a restart now loses it.
            with contextlib.suppress(OSError):
                tmp.unlink()
            self.unwritten += 1
            log.error("spool.unwritable", id=ident, error=str(exc), unwritten=self.unwritten)
        with self._changed:
            self._entries[seq] = (req, len(data))
            self._seq_by_id[ident] = seq
            self._bytes += len(data)
            self._changed.notify_all()
        return True

    def _fsync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ack(self, event_id: str) -> None:
        """The collector has the record: forget it."""
        with self._lock:
            seq = self._seq_by_id.pop(event_id, None)
            if seq is None:
                return
            _ev, size = self._entries.pop(seq)
            self._bytes -= size
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{seq:020d}{_SUFFIX}").unlink()

    def oldest_written_at(self) -> float | None:
        """When the oldest record still waiting for the collector was written
        (wall-clock seconds), or None when none waits."""
        with self._lock:
            if not self._entries:
                return None
            seq = next(iter(self._entries))
        try:
            return (self.dir / f"{seq:020d}{_SUFFIX}").stat().st_mtime
        except FileNotFoundError:
            return None  # acknowledged in the meantime, or kept in memory only

    def pending_after(self, seq: int) -> list[Entry]:
        with self._lock:
            return [Entry(s, req) for s, (req, _size) in self._entries.items() if s > seq]

    def wait_for_more(self, seq: int, timeout: float) -> bool:
        """Blocks until an entry newer than seq exists, or timeout."""
        with self._changed:
            return self._changed.wait_for(
                lambda: bool(self._entries) and next(reversed(self._entries)) > seq, timeout
            )
