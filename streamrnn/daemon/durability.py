"""What makes the daemon lose nothing it acknowledged: the journal, checkpoints, and the restore.

Each message the engine takes goes to the journal and is acknowledged to the broker once it is on
disk; a checkpoint of the whole state is written every ``checkpoint.every`` seconds (by a thread of
its own, from copies), after a model swap and on SIGTERM. A start restores the newest sound
checkpoint and replays the journal after it (publishing those forecasts again: at least once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from streamrnn import __version__
from streamrnn.config import ConfigError, Settings
from streamrnn.daemon import journal
from streamrnn.daemon.checkpoint import Store, check_layout, layout
from streamrnn.daemon.metrics import Metrics
from streamrnn.delivery import Delivery
from streamrnn.engine.engine import Engine
from streamrnn.engine.frame import Frame
from streamrnn.intake.frames import Assembler
from streamrnn.logs import RateLimited

log = logging.getLogger(__name__)


class Durability:
    """The checkpoint store and the journal of one daemon, and the thread that writes checkpoints."""

    def __init__(self, settings: Settings, metrics: Metrics, acknowledge: Callable[[list[Delivery]], None], limiter: RateLimited) -> None:
        c = settings.checkpoint
        assert c.dir is not None
        self.settings, self.metrics, self._ack, self._limiter = settings, metrics, acknowledge, limiter
        self.store = Store(writable(c.dir) / "checkpoints", c.keep)
        self.journal: journal.Journal | None = None  # opened by restore()
        self._saver: threading.Thread | None = None
        self._last = time.monotonic()

    def restore(
        self,
        engine: Engine,
        assembler: Assembler,
        ingest: Callable[[Delivery], list[Frame] | None],
        serve: Callable[[list[Frame]], None],
        beat: Callable[[], None],
    ) -> None:
        """Load the newest sound checkpoint into the engine and the assembler, replay the journal
        after it through ``ingest`` and ``serve`` (``beat`` every thousand records: a long replay is
        work, not a hang), and open the journal."""
        t0 = time.perf_counter()
        seq = self._load(engine, assembler)
        self.metrics.checkpoints_skipped.inc(self.store.skipped)
        self.metrics.version.set(engine.version)
        folder = self.store.folder.parent / "journal"
        last, replayed, frames = seq, 0, 0
        for rec in journal.replay(folder, after=seq):
            if rec.kind == journal.MESSAGE:  # on the clock it arrived by, as it was taken then
                got = ingest(Delivery(rec.topic, rec.payload, rec.arrival, 0, 0, -1)) or []
            else:
                got = assembler.close(rec.topic, rec.tick)
            serve(got)
            last, replayed, frames = rec.seq, replayed + 1, frames + len(got)
            if replayed % 1000 == 0:
                beat()
        self.metrics.replayed.inc(replayed)
        assembler.restart_clock(time.time())  # the downtime is not silence
        self.journal = journal.Journal(folder, self._acknowledge, next_seq=last + 1)
        if replayed or seq:
            log.info("journal replayed", extra={"records": replayed, "frames": frames, "seconds": round(time.perf_counter() - t0, 3)})

    def _load(self, engine: Engine, assembler: Assembler) -> int:
        """The newest sound checkpoint, loaded; its sequence number (0: none)."""
        wanted = layout(self.settings)
        for seq, path, state in self.store.candidates():
            check_layout(state.get("layout", {}), wanted, path)  # refused, not half-loaded: raises
            try:
                engine.load_state(state["engine"], now=time.time())
                assembler.load_state(state["assembler"], time.time())
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                self.store.skipped += 1
                log.error("checkpoint skipped: unusable", extra={"path": str(path), "error": f"{type(e).__name__}: {e}"})
                continue
            extra = {"path": str(path), "seq": seq, "streams": len(engine.streams), "frames": engine.frames_seen}
            log.info("checkpoint restored", extra={**extra, "model_version": engine.version})
            return seq
        if self.store.skipped:
            log.warning("no sound checkpoint: starting afresh, with what the journal still holds", extra={"skipped": self.store.skipped})
        return 0

    def _acknowledge(self, msgs: list[Delivery]) -> None:
        """The journal's thread: these messages are on disk now."""
        self._ack(msgs)

    def due(self) -> bool:
        """A periodic checkpoint is due."""
        return time.monotonic() - self._last >= self.settings.checkpoint.every

    def checkpoint(self, engine: Engine, assembler: Assembler, wait: bool = False) -> None:
        """Copy the state (here, on the engine thread, between two steps; the rings as they are,
        see ``Engine.state``) and write it from a thread of its own. If the last one is still being
        written, wait (at shutdown) or try again at the next slow pass."""
        assert self.journal is not None
        if self._saver is not None and self._saver.is_alive():
            if not wait:
                self._last = -math.inf  # due again at the next slow pass, a second from now
                return
            self._saver.join()
        self._last = time.monotonic()
        seq = self.journal.seq
        state = {
            "streamrnn": __version__,
            "seq": seq,
            "written": time.time(),
            "layout": layout(self.settings),
            # the rings' own arrays, not copies (copying them stalled serving for a large part of a
            # second at many streams of long rings, most of it faulting the copies' pages in). A
            # frame appended meanwhile may land in what is written, in the slot of the oldest frame
            # it replaces, and the journal replayed after the checkpoint appends that same frame to
            # that same slot again; nothing reads a ring during the replay, so the state restored is
            # exact (where the journal lost records to a full disk, a few of the oldest slots may
            # hold later frames)
            "engine": engine.state(live_rings=True),
            "assembler": assembler.state(),
        }
        self.journal.rotate()
        self._saver = threading.Thread(target=self._save, args=(seq, state, wait), name="checkpoint", daemon=True)
        self._saver.start()
        if wait:
            self._saver.join()

    def _save(self, seq: int, state: dict, final: bool) -> None:
        assert self.journal is not None
        t0 = time.perf_counter()
        try:
            path, size = self.store.write(seq, state)
        except Exception as e:  # a full disk (or a bug) costs this checkpoint, never the daemon
            self.metrics.checkpoints.labels("failed").inc()
            error = f"{type(e).__name__}: {e}"
            where = {"folder": str(self.store.folder), "seq": seq, "error": error}
            self._limiter.log(log, logging.ERROR, "checkpoint", "checkpoint failed", exc_info=not isinstance(e, OSError), **where)
            return
        seconds = time.perf_counter() - t0
        self.metrics.checkpoint_written(seconds, size)
        oldest = self.store.oldest()
        if oldest is not None:
            self.journal.prune(oldest)
        extra = {"path": str(path), "seq": seq, "bytes": size, "seconds": round(seconds, 3)}
        log.log(logging.INFO if final else logging.DEBUG, "checkpoint written", extra=extra)

    def close(self, timeout: float) -> None:
        """Stop the journal's thread, syncing what it holds, within ``timeout`` seconds."""
        if self.journal is not None:
            self.journal.close(timeout)


def writable(folder: Path) -> Path:
    """``checkpoint.dir``, created if need be; a folder we cannot write fails at start, by name."""
    try:
        for sub in ("checkpoints", "journal"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        probe = folder / "journal" / ".probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"checkpoint.dir: {folder} cannot be created or written: {e.strerror or e}") from None
    return folder
