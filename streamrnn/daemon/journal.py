"""The journal: an append-only log of what the engine took since the checkpoints still kept.

A sensor message is acknowledged to the broker only once its record is on disk: whatever the
broker forgets after an acknowledgement, a restart replays from here. The engine thread only
appends to a list in memory; the journal's own thread writes what queued up, fsyncs once for all
of it (a group commit) and then acknowledges, so a forecast never waits for the disk.

Record: ``length u32 | crc32 u32 | body``, body ``kind u8 | seq u64 | arrival f64 | topic length
u16 | topic | payload``. Kinds: ``M`` a message as it arrived, ``C`` a tick closed by the wall
clock (topic: the stream, payload: the last tick as i64). A record torn by a crash fails its
length or CRC: it and the rest of its segment are ignored (it was never acknowledged).

A segment (``<first seq>.log``, a bound below the numbers it holds) starts at a checkpoint and is
deleted once the oldest checkpoint kept covers all of its records. However long the disk is full,
the folder holds a bounded number of files: a write that fails is retried in the same segment, cut
back to its last whole record, and a checkpoint that starts while the one before has not been
written (nothing pruned since) starts no new segment, nor does one that finds the segment empty.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamrnn.atomic import fsync_dir
from streamrnn.logs import RateLimited

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
_BODY = struct.Struct("<cQdH")
_TICK = struct.Struct("<q")
_NAME = re.compile(r"^(\d{20})\.log$")
MESSAGE, CLOSE = b"M", b"C"


@dataclass(frozen=True, slots=True)
class Record:
    kind: bytes
    seq: int
    arrival: float
    topic: str
    payload: bytes

    @property
    def tick(self) -> int:
        return _TICK.unpack(self.payload)[0]


def encode(kind: bytes, seq: int, arrival: float, topic: str, payload: bytes) -> bytes:
    t = topic.encode("utf-8", "surrogatepass")
    body = _BODY.pack(kind, seq, arrival, len(t)) + t + payload
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def read_segment(path: Path) -> Iterator[Record]:
    """The sound records of one segment, up to the first torn or altered one."""
    data = path.read_bytes()
    at = 0
    while at + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, at)
        body = data[at + _FRAME.size : at + _FRAME.size + length]
        if len(body) != length or length < _BODY.size or zlib.crc32(body) != crc:
            log.warning("journal segment ends in a torn record", extra={"path": str(path), "offset": at, "bytes_ignored": len(data) - at})
            return
        kind, seq, arrival, n = _BODY.unpack_from(body)
        topic = body[_BODY.size : _BODY.size + n].decode("utf-8", "surrogatepass")
        yield Record(kind, seq, arrival, topic, body[_BODY.size + n :])
        at += _FRAME.size + length


def segments(folder: Path) -> list[tuple[int, Path]]:
    """(first seq, path) of each segment, oldest first."""
    if not folder.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name)))


def replay(folder: str | Path, after: int) -> Iterator[Record]:
    """Every sound record with a sequence number above ``after``, in order."""
    for _, path in segments(Path(folder)):
        for rec in read_segment(path):
            if rec.seq > after:
                yield rec


class Journal:
    """Appends from the engine thread, writes and fsyncs from its own, then hands the tokens of
    the records now durable to ``on_durable`` (the daemon acknowledges them to the broker).

    A write that fails (a full disk) is logged and counted, and the records are handed on all
    the same: serving goes on, only without the promise of a replay until the disk has room.
    """

    def __init__(self, folder: str | Path, on_durable: Callable[[list], None], next_seq: int = 1) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.on_durable = on_durable
        self.seq = next_seq - 1  # the last sequence number given out
        self.counts: Counter[str] = Counter()  # records, bytes, syncs, errors
        self.sync_seconds: deque[float] = deque(maxlen=10_000)  # drained by the daemon into a histogram
        self._errors = RateLimited(burst=5, per=60.0)  # a read-only or full disk fails every batch
        self._queue: list[tuple] = []  # (kind, seq, arrival, topic, payload, token), or ("rotate" | "prune", seq)
        self._cv = threading.Condition()
        self._file = None
        self._rotated = False  # a segment started for a checkpoint not yet written (nothing pruned since)
        self._closing = False
        self._idle = True
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    # -- engine thread --------------------------------------------------------------------
    def append(self, kind: bytes, arrival: float, topic: str, payload: bytes, token: object = None) -> int:
        """Queue a record; returns its sequence number. ``token`` is handed on once it is durable."""
        self.seq += 1
        with self._cv:  # encoded in the journal's thread: nothing more on the engine's per message
            self._queue.append((kind, self.seq, arrival, topic, payload, token))
            self._cv.notify()
        return self.seq

    def close_tick(self, stream: str, last: int, now: float) -> int:
        return self.append(CLOSE, now, stream, _TICK.pack(last))

    def rotate(self) -> None:
        """Start a new segment with the next record: the checkpoint being written covers the rest."""
        with self._cv:
            self._queue.append(("rotate", self.seq + 1))
            self._cv.notify()

    def prune(self, covered: int) -> None:
        """Delete the segments whose every record is at or below ``covered`` (in the journal's thread)."""
        with self._cv:
            self._queue.append(("prune", covered))
            self._cv.notify()

    def flush(self, timeout: float) -> bool:
        """Wait until everything appended so far is written, synced and handed on."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while (self._queue or not self._idle) and time.monotonic() < deadline:
                self._cv.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            return not self._queue and self._idle

    def close(self, timeout: float = 10.0) -> bool:
        done = self.flush(timeout)
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join(timeout)
        return done

    # -- the journal's thread -------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._idle = True
                    self._cv.notify_all()
                    self._cv.wait()
                if not self._queue:
                    break
                batch, self._queue = self._queue, []
                self._idle = False
            self._write(batch)
        if self._file is not None:
            self._file.close()

    def _write(self, batch: list) -> None:
        start, data, tokens = 0, [], []
        for item in batch:
            if item[0] in ("rotate", "prune"):  # records before it go to the segment they belong to
                self._sync(start, data, tokens)
                start, data, tokens = 0, [], []
                try:
                    (self._rotate if item[0] == "rotate" else self._prune)(item[1])
                except OSError as e:  # the next batch opens a segment of its own
                    self.counts["errors"] += 1
                    self._abandon()
                    self._errors.log(
                        log,
                        logging.ERROR,
                        "segment",
                        "journal segment could not be opened or pruned",
                        folder=str(self.folder),
                        error=str(e),
                        errors=self.counts["errors"],
                    )
                continue
            kind, seq, arrival, topic, payload, token = item
            start = start or seq
            data.append(encode(kind, seq, arrival, topic, payload))
            if token is not None:
                tokens.append(token)
        self._sync(start, data, tokens)

    def _sync(self, first: int, data: list[bytes], tokens: list[object]) -> None:
        if data:
            t0 = time.perf_counter()
            try:
                if self._file is None:
                    self._open(first)
                assert self._file is not None
                good = self._file.tell()
                try:
                    out = memoryview(b"".join(data))
                    while out:  # unbuffered: what a full disk refused is not left behind in a buffer
                        out = out[self._file.write(out) :]
                    os.fdatasync(self._file.fileno())
                except OSError:
                    try:  # no torn record in front of the next batch, which retries this segment
                        self._file.seek(good)
                        self._file.truncate(good)
                    except OSError:
                        self._abandon()  # what it holds past ``good`` is unknown: the next batch starts another
                    raise
                self.counts["records"] += len(data)
                self.counts["bytes"] += sum(map(len, data))
                self.counts["syncs"] += 1
                self.sync_seconds.append(time.perf_counter() - t0)
            except OSError as e:
                self.counts["errors"] += 1
                self._errors.log(
                    log,
                    logging.ERROR,
                    "write",
                    "journal write failed: acknowledging without a durable record",
                    folder=str(self.folder),
                    error=str(e),
                    records=len(data),
                    errors=self.counts["errors"],
                )
        if tokens:
            try:
                self.on_durable(tokens)
            except Exception as e:  # a bug there must not end the thread that acknowledges everything
                self._errors.log(
                    log, logging.ERROR, "ack", "acknowledging journaled messages failed", exc_info=True, error=f"{type(e).__name__}: {e}"
                )

    def _rotate(self, first: int) -> None:
        if self._file is not None and (self._rotated or self._file.tell() == 0):
            return  # the checkpoint before was never written, or nothing came since: this segment goes on
        self._open(first)
        self._rotated = True

    def _open(self, first: int) -> None:
        self._abandon()
        path = self.folder / f"{first:020d}.log"
        # a new segment is named by the first number it will hold, above all that was replayed:
        # whatever a file of that name holds is the torn tail of a crash, never acknowledged
        self._file = open(path, "wb", buffering=0)
        fsync_dir(self.folder)

    def _abandon(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:
                self._errors.log(log, logging.WARNING, "close", "journal segment close failed", error=str(e))
            self._file = None

    def _prune(self, covered: int) -> None:
        self._rotated = False  # a checkpoint was written
        segs = segments(self.folder)
        current = self._file.name if self._file is not None else None
        for (_, path), (nxt, _) in zip(segs, segs[1:]):
            if nxt - 1 <= covered and str(path) != current:
                path.unlink(missing_ok=True)
                self.counts["pruned"] += 1
