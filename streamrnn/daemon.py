"""The daemon: wiring and lifecycle. MQTT message -> payload -> frame -> engine step -> forecast -> MQTT.

One engine thread owns the engine and runs the loop below; paho's network thread only fills the
inbox; the trainer runs in a child process and its verdict is adopted between two steps. SIGTERM, SIGHUP or
SIGINT closes intake, finishes the frames in hand, publishes them, says ``offline`` and returns 0.

With ``checkpoint.dir`` set, nothing acknowledged is lost: each message the engine takes goes to the
journal and is acknowledged to the broker once it is on disk; a checkpoint of the whole state is
written every ``checkpoint.every`` seconds (by a thread of its own, from copies), after a model
swap and on SIGTERM. A start restores the newest sound checkpoint, replays the journal after it
(publishing those forecasts again: at least once), then takes what the broker kept for its session.
"""

from __future__ import annotations

import gc
import logging
import math
import queue
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from streamrnn import __version__, forecast, journal
from streamrnn.checkpoint import Store, check_layout, layout
from streamrnn.config import ConfigError, Settings
from streamrnn.endpoint import Endpoint
from streamrnn.engine import Engine
from streamrnn.frames import Assembler, Frame
from streamrnn.logs import RateLimited
from streamrnn.metrics import Metrics
from streamrnn.model import StreamRNN
from streamrnn.mqtt import Delivery, Link
from streamrnn.notify import Notifier
from streamrnn.payload import Parser, Rejected, subscription
from streamrnn.retrainer import Retrainer

log = logging.getLogger(__name__)

_BATCH = 10_000  # messages taken per turn at most: bounds the time between two wall-clock checks
_EVERY = 1.0  # seconds between slow housekeeping (skill, gauges)
_SERVE_AFTER = 0.005  # seconds a closed frame waits at most for the messages behind it before it is served
# stream-frames a turn catches an adopted model up over (1.4 ms here alone at 1,000 streams: 16 of
# them over 12 frames in one pass; 6 ms median under the bench's load): the catch-up after a long
# retrain is spread over turns instead of stalling one
_CATCH_UP = 192
# counts of the assembler's and the engine's that are worth a (rate-limited) log line as they grow
_SAID = (
    ("assembler", "overflow", "readings refused: a stream holds frames.max_pending readings for ticks still open"),
    ("assembler", "resynced", "streams restarted on their new clock: every reading late for frames.resync_after"),
    ("assembler", "stuck", "ticks closed while their stream kept sending: none closed for frames.max_open"),
    ("engine", "refused", "frames refused: streams.max_streams streams have a state"),
)


class Daemon:
    def __init__(
        self, settings: Settings, model: StreamRNN | None = None, version: int = 0, registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = s = settings
        self.engine = Engine(settings, model, version)
        m = s.mqtt
        self.parser = Parser(
            self.engine.channels, m.sensor_topic, m.frame_topic, m.max_payload, s.frames.max_abs, s.frames.max_future, s.streams.allowed()
        )
        self.assembler = Assembler(
            len(self.engine.channels),
            s.features.period,
            s.lateness,
            s.max_hold,
            s.frames.idle_close,
            s.streams.max_streams,
            s.streams.idle_timeout,
            max_pending=s.max_pending,
            max_open=s.max_open,
            probation=s.streams.probation,
            resync_after=s.resync_after,
            on_drop=self.engine.forget,
        )
        self.inbox: queue.Queue[Delivery] = queue.Queue(m.queue_size)
        subs = [subscription(m.sensor_topic)] + ([subscription(m.frame_topic)] if m.frame_topic else [])
        self.link = Link(m, subs, self.inbox)
        self.retrainer = Retrainer(s.trainer) if s.trainer.enabled else None
        spec = self.engine.spec
        self.metrics = Metrics(registry or CollectorRegistry(), spec.targets, spec.horizon, s.daemon.stream_metrics)
        self.metrics.build.info(
            {"version": __version__, "device": str(self.engine.device), "torch": torch.__version__, "model": s.model.kind}
        )
        self.metrics.version.set(version)
        self.metrics.nominal.set(s.evaluator.coverage)
        self.http = (
            Endpoint(
                self.metrics.registry,
                s.daemon.metrics_host,
                s.daemon.metrics_port,
                s.daemon.metrics_max_rate,
                log_format=s.daemon.log_format,
            )
            if s.daemon.metrics_port is not None
            else None
        )
        self.notify = Notifier.from_env()
        c = s.checkpoint
        self.store = Store(_writable(c.dir) / "checkpoints", c.keep) if c.dir is not None else None
        self.journal: journal.Journal | None = None  # opened by run(), after the restore
        self._saver: threading.Thread | None = None
        self._last_checkpoint = time.monotonic()
        self.stopping = threading.Event()
        self.forecast_topic = m.forecast_topic
        self.skill: dict[str, float | None] = {}
        self._rejects = RateLimited(burst=5, per=60.0)
        self._carry: list[Delivery] = []  # taken from the inbox, not yet ingested (a turn served early)
        self._synced: dict[str, Counter[str]] = {}
        self._logged: Counter[str] = Counter()
        self._last_slow = -math.inf
        self._last_retrain = time.monotonic()
        self._was_ready = False

    def ready(self) -> bool:
        """Connected and subscribed, and not stopping (the model is loaded before we connect): ``/readyz``."""
        return self.link.ready and not self.stopping.is_set()

    def stop(self) -> None:
        self.stopping.set()

    # -- lifecycle ------------------------------------------------------------------------
    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            self._install_signals()
        if self.settings.threads:
            torch.set_num_threads(self.settings.threads)  # from the engine's thread, before its first step
        if self.http:
            self.http.start()
        log.info(
            "starting",
            extra={
                "version": __version__,
                "device": str(self.engine.device),
                "broker": self.settings.mqtt.url,
                "metrics_port": self.http.port if self.http else None,
            },
        )
        if self.store is not None:
            self._restore()  # before connecting: the forecasts it makes wait in the client's queue
        # what the start made (torch, the model, settings, restored state) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it (3 us per
        # message at 10 streams here)
        gc.freeze()
        self.link.start()
        self.notify.ready(f"serving; connecting to {self.settings.mqtt.url}")
        try:
            while not self.stopping.is_set():
                self.turn(0.05)
        finally:
            code = self._shutdown()
        return code

    def _install_signals(self) -> None:
        def handler(signum: int, frame: object) -> None:
            if self.stopping.is_set():
                log.warning("second signal: exiting at once")
                raise SystemExit(130)
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            self.stopping.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, handler)  # a closing terminal: there is nothing to reload, so it stops as SIGTERM does

    def _shutdown(self) -> int:
        deadline = time.monotonic() + self.settings.daemon.grace
        self.notify.stopping()
        if self.http:
            self.http.beat(False)  # unready at once: no new traffic, please
        self.link.close_intake()
        while (self._carry or not self.inbox.empty()) and time.monotonic() < deadline:
            self.turn(0.0)  # what was received
        if self.retrainer:
            self.retrainer.close()
        if self.engine.catch_up():  # a verdict's model still catching up serves, and is checkpointed
            self.metrics.version.set(self.engine.version)
        if self.journal is not None:
            # the readings in hand go into the checkpoint, the rest wait at the broker: the next
            # start goes on exactly where this one stopped
            self._checkpoint(wait=True)
            self.journal.close(max(0.1, deadline - time.monotonic()))
        else:
            self._serve(self.assembler.flush())  # the frames still waiting for late readings
        flushed = self.link.stop(max(0.0, deadline - time.monotonic()))
        if not flushed:
            log.warning("grace period over with forecasts unpublished", extra={"grace": self.settings.daemon.grace})
        if self.http:
            self.http.close()
        self.notify.close()
        log.info("stopped", extra={"frames": self.engine.frames_seen, "model_version": self.engine.version})
        return 0

    # -- the loop -------------------------------------------------------------------------
    def turn(self, wait: float) -> int:
        """One pass: take what arrived, assemble, step, publish, then housekeeping. Returns messages taken."""
        msgs, self._carry = self._carry or self._take(wait), []
        frames: list[Frame] = []
        closed: list[float] = []  # when each frame closed (perf_counter)
        for i, msg in enumerate(msgs):
            got = self._ingest(msg, msg.arrival)
            if got is not None and self.journal is not None:
                self.journal.append(journal.MESSAGE, msg.arrival, msg.topic, msg.payload, msg)  # acknowledged once on disk
            else:
                self.link.ack(msg)
            if got:
                frames += got
                closed += [time.perf_counter()] * len(got)
            if closed and time.perf_counter() - closed[0] > _SERVE_AFTER:
                self._carry, msgs = msgs[i + 1 :], msgs[: i + 1]  # serve what closed; the rest next turn
                break
        # silence is measured on the arrival clock: with messages still waiting (carried to the
        # next turn, or a backlog in the inbox) we only know it up to the last one taken, and a
        # stream whose next reading sits in that backlog has not gone quiet
        wall = time.time()
        if msgs and (self._carry or not self.inbox.empty()):
            wall = msgs[-1].arrival
        for stream, last in self.assembler.due(wall):
            if self.journal is not None:
                self.journal.close_tick(stream, last, wall)
            got = self.assembler.close(stream, last)
            frames += got
            closed += [time.perf_counter()] * len(got)
        if msgs:
            self.metrics.received.inc(len(msgs))
        if frames:
            self._serve(frames, closed)
        self._housekeeping()
        return len(msgs)

    def _take(self, wait: float) -> list[Delivery]:
        try:
            out = [self.inbox.get(timeout=wait) if wait > 0 else self.inbox.get_nowait()]
        except queue.Empty:
            return []
        try:
            while len(out) < _BATCH:
                out.append(self.inbox.get_nowait())
        except queue.Empty:
            pass  # drained
        return out

    def _ingest(self, msg: Delivery, wall: float) -> list[Frame] | None:
        """The frames a message closed; None if it was refused."""
        if msg.retain and not self.settings.mqtt.accept_retained:
            self._refuse(
                "retained", msg, "a retained message is the broker's last value, replayed at subscribe: old news (mqtt.accept_retained)"
            )
            return None
        try:
            frames: list[Frame] = []
            for reading in self.parser.parse(msg.topic, msg.payload, msg.arrival):
                frames += self.assembler.add(reading, wall)
            return frames
        except Rejected as e:
            self._refuse(e.reason, msg, str(e))
        except Exception as e:  # a bug must cost one message, never the daemon
            self._refuse("internal", msg, f"{type(e).__name__}: {e}", exc_info=True)
        return None

    def _refuse(self, reason: str, msg: Delivery, detail: str, exc_info: bool = False) -> None:
        self.metrics.dropped.labels(reason).inc()
        level = logging.ERROR if exc_info else logging.WARNING
        self._rejects.log(log, level, reason, "message refused", exc_info=exc_info, reason=reason, detail=detail, topic=msg.topic[:200])

    def _serve(self, frames: list[Frame], closed: list[float] | None = None) -> None:
        """Step the frames, publish their forecasts; ``closed`` says when each frame closed
        (perf_counter), for the frame-to-forecast latency."""
        if not frames:
            return
        t0 = time.perf_counter()
        forecasts = self.engine.step(frames, now=time.time())
        self.metrics.step.observe(time.perf_counter() - t0)
        self.metrics.frames.inc(len(forecasts))
        self.metrics.frames_missing.inc(sum(1 for f in frames if np.isnan(f.values).any()))
        when = dict(zip([(f.stream, f.ts) for f in frames], closed or []))
        topic, latency = self.forecast_topic, self.metrics.latency
        payloads = forecast.encode_all(forecasts, self.settings.features.period, self.skill)
        reasons = self.link.publish_many(zip([topic.format(stream=s) for s in forecasts.streams], payloads))
        sent = time.perf_counter()
        published = 0
        for stream, ts, reason in zip(forecasts.streams, forecasts.ts, reasons):
            if reason is None:
                published += 1
                latency.observe(sent - when.get((stream, ts), t0))
            else:
                self.metrics.publish_failed.labels(reason).inc()
        self.metrics.published.inc(published)

    def _housekeeping(self) -> None:
        if self.retrainer:
            self._retrain()
        self.notify.watchdog()
        ready = self.ready()
        if ready != self._was_ready:  # said at once, not at the next slow pass
            log.info("ready" if ready else "not ready", extra={"connected": self.link.connected, "subscribed": self.link.subscribed})
            self.notify.status(
                f"ready: serving {len(self.engine.streams)} streams"
                if ready
                else f"not ready: broker {self.settings.mqtt.url} {'connected, subscribing' if self.link.connected else 'unreachable'}"
            )
            self._was_ready = ready
            if self.http:
                self.http.beat(ready)
        now = time.monotonic()
        if now - self._last_slow < _EVERY:
            return
        self._last_slow = now
        if self.http:
            self.http.beat(ready)
            if self.http.check():
                self.metrics.endpoint_restarts.inc()
        self._gauges()
        if self.journal is not None and now - self._last_checkpoint >= self.settings.checkpoint.every:
            self._checkpoint()

    def _gauges(self) -> None:
        m, e = self.metrics, self.engine
        scores = e.evaluator.scores(live=True, flush=False)
        m.set_quality(scores)
        m.set_gate(e.gate_weights()[0][1])
        self._refresh_skill(scores["skill"])
        m.queue.set(self.inbox.qsize())
        m.streams.set(len(e.streams))
        m.connected.set(1 if self.link.connected else 0)
        m.subscribed.set(1 if self.link.subscribed else 0)
        m.pending.set(self.link.pending)
        held = [len(r) for r in e.rings.values()]
        m.ring_frames.set(sum(held))
        m.ring_fill.set(sum(held) / (len(held) * self.settings.ring.size) if held else 0.0)
        if m.stream_last is not None:
            m.set_streams({name: e.last_ts(name) for name in e.streams})
        self._sync(
            "link",
            self.link.counts,
            {"queue_full": m.dropped.labels("queue_full"), "reconnects": m.reconnects, "status_reasserted": m.status_reasserted},
        )
        a = self.assembler.counts
        self._sync(
            "assembler",
            a,
            {
                "late": m.dropped.labels("late"),
                "overflow": m.dropped.labels("overflow"),
                "displaced": m.stream_resets.labels("displaced"),
                "resynced": m.stream_resets.labels("resynced"),
                "stuck": m.stuck_closes,
            },
        )
        self._sync("engine", e.counts, {"refused": m.dropped.labels("refused"), "late": m.frames_late})
        for source, key, what in _SAID:  # what else the input did, said at a bounded rate
            total = (a if source == "assembler" else e.counts)[key]
            if total > self._logged[key]:
                self._rejects.log(log, logging.WARNING, key, what, total=total)
                self._logged[key] = total
        if self.journal is not None:
            self._sync("journal", self.journal.counts, {"records": m.journal_records, "errors": m.journal_errors})
            while self.journal.sync_seconds:
                m.journal_sync.observe(self.journal.sync_seconds.popleft())

    def _sync(self, name: str, source: Counter[str], targets: dict) -> None:
        """Carry the increments of a plain Counter kept by another part into Prometheus counters."""
        seen = self._synced.setdefault(name, Counter())
        for key, metric in targets.items():
            delta = source[key] - seen[key]
            if delta > 0:
                metric.inc(delta)
                seen[key] = source[key]

    def _refresh_skill(self, sc: np.ndarray) -> None:
        """The mean live skill per target over the steps, carried in each forecast message."""
        for j, name in enumerate(self.engine.spec.targets):
            col = sc[:, j]
            col = col[np.isfinite(col)]
            self.skill[name] = round(float(col.mean()), 4) if len(col) else None

    def _retrain(self) -> None:
        assert self.retrainer is not None
        if self.engine.adopting:  # no new retrain until the last verdict's model serves
            if self.engine.catch_up(_CATCH_UP):
                self._served()
            return
        done = self.retrainer.poll()
        if done is not None:
            snap, verdict, seconds = done
            result = self.engine.adopt(snap, verdict, at_once=False)
            if snap.lookback:
                self.metrics.linear_fits.labels("fitted" if verdict.linear is not None else "failed").inc()
            if result.outcome == "linear":  # the linear contender alone
                log.debug("linear contender fitted", extra={"seconds": round(seconds, 2), "linear": verdict.report.linear})
                return
            self.metrics.retrains.labels(result.outcome).inc()
            self.metrics.retrain_seconds.observe(seconds)
            self.metrics.retrain_running.set(0)
            if verdict.outcome != "failed":
                self.metrics.train_loss.set(verdict.report.train_loss)
                self.metrics.val_loss.set(verdict.report.val_loss)
            log.info(
                "retrain done",
                extra={
                    "outcome": result.outcome,
                    "seconds": round(seconds, 2),
                    "model_version": result.version,
                    "error": verdict.report.error,
                },
            )
            if verdict.serve is not None and not self.engine.adopting:
                self._served()
            return
        if self.retrainer.busy or self.stopping.is_set():
            return
        interval = self.settings.trainer.interval
        due = self.engine.retrain_due or (
            interval is not None and time.monotonic() - self._last_retrain >= interval and self.engine.retrain_ready
        )
        if due:
            self._last_retrain = time.monotonic()
            snap = self.engine.snapshot()
            champion = {k: v.numpy() for k, v in self.engine.state_dict().items()}
            self.retrainer.start(snap, self.engine.spec, champion, self.engine.next_seed())
            self.metrics.retrain_running.set(1)
        elif self.engine.linear_due:
            self.retrainer.start(self.engine.snapshot(recurrent=False), self.engine.spec, {}, self.engine.next_seed())

    def _served(self) -> None:
        """An adopted model serves from now on: say so, and checkpoint it so that it survives a crash."""
        self.metrics.version.set(self.engine.version)
        log.info("model served", extra={"model_version": self.engine.version})
        if self.journal is not None:
            self._checkpoint()

    # -- checkpoints ----------------------------------------------------------------------
    def _restore(self) -> None:
        """Load the newest sound checkpoint, replay the journal after it, open the journal."""
        assert self.store is not None
        t0, seq, wanted = time.perf_counter(), 0, layout(self.settings)
        for seq_, path, state in self.store.candidates():
            check_layout(state.get("layout", {}), wanted, path)  # refused, not half-loaded: raises
            try:
                self.engine.load_state(state["engine"], now=time.time())
                self.assembler.load_state(state["assembler"], time.time())
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                self.store.skipped += 1
                log.error("checkpoint skipped: unusable", extra={"path": str(path), "error": f"{type(e).__name__}: {e}"})
                continue
            seq = seq_
            log.info(
                "checkpoint restored",
                extra={
                    "path": str(path),
                    "seq": seq,
                    "streams": len(self.engine.streams),
                    "frames": self.engine.frames_seen,
                    "model_version": self.engine.version,
                },
            )
            break
        if not seq and self.store.skipped:
            log.warning("no sound checkpoint: starting afresh, with what the journal still holds", extra={"skipped": self.store.skipped})
        self.metrics.checkpoints_skipped.inc(self.store.skipped)
        self.metrics.version.set(self.engine.version)
        folder = self.store.folder.parent / "journal"
        last, replayed, frames = seq, 0, 0
        for rec in journal.replay(folder, after=seq):
            if rec.kind == journal.MESSAGE:  # on the clock it arrived by, as it was taken then
                got = self._ingest(Delivery(rec.topic, rec.payload, rec.arrival, 0, 0, -1), rec.arrival) or []
            else:
                got = self.assembler.close(rec.topic, rec.tick)
            self._serve(got)
            last, replayed, frames = rec.seq, replayed + 1, frames + len(got)
            if replayed % 1000 == 0:  # a long replay is work, not a hang
                self.notify.watchdog()
                if self.http:
                    self.http.beat(False)
        self.metrics.replayed.inc(replayed)
        self.assembler.restart_clock(time.time())  # the downtime is not silence
        self.journal = journal.Journal(folder, self._acknowledge, next_seq=last + 1)
        if replayed or seq:
            log.info("journal replayed", extra={"records": replayed, "frames": frames, "seconds": round(time.perf_counter() - t0, 3)})

    def _acknowledge(self, msgs: list[Delivery]) -> None:
        """The journal's thread: these messages are on disk now."""
        for msg in msgs:
            self.link.ack(msg)

    def _checkpoint(self, wait: bool = False) -> None:
        """Copy the state (here, on the engine thread, between two steps; the rings as they are,
        see ``Engine.state``) and write it from a thread of its own. If the last one is still being
        written, wait (at shutdown) or try again at the next slow pass."""
        assert self.store is not None and self.journal is not None
        if self._saver is not None and self._saver.is_alive():
            if not wait:
                self._last_checkpoint = -math.inf  # due again at the next slow pass, a second from now
                return
            self._saver.join()
        self._last_checkpoint = time.monotonic()
        seq = self.journal.seq
        state = {
            "streamrnn": __version__,
            "seq": seq,
            "written": time.time(),
            "layout": layout(self.settings),
            "engine": self.engine.state(live_rings=True),
            "assembler": self.assembler.state(),
        }
        self.journal.rotate()
        self._saver = threading.Thread(target=self._save, args=(seq, state, wait), name="checkpoint", daemon=True)
        self._saver.start()
        if wait:
            self._saver.join()

    def _save(self, seq: int, state: dict, final: bool) -> None:
        assert self.store is not None and self.journal is not None
        t0 = time.perf_counter()
        try:
            path, size = self.store.write(seq, state)
        except Exception as e:  # a full disk (or a bug) costs this checkpoint, never the daemon
            self.metrics.checkpoints.labels("failed").inc()
            self._rejects.log(
                log,
                logging.ERROR,
                "checkpoint",
                "checkpoint failed",
                exc_info=not isinstance(e, OSError),
                folder=str(self.store.folder),
                seq=seq,
                error=f"{type(e).__name__}: {e}",
            )
            return
        seconds = time.perf_counter() - t0
        m = self.metrics
        m.checkpoints.labels("written").inc()
        m.checkpoint_seconds.observe(seconds)
        m.checkpoint_bytes.set(size)
        m.checkpoint_last.set(time.time())
        oldest = self.store.oldest()
        if oldest is not None:
            self.journal.prune(oldest)
        log.log(
            logging.INFO if final else logging.DEBUG,
            "checkpoint written",
            extra={"path": str(path), "seq": seq, "bytes": size, "seconds": round(seconds, 3)},
        )


def _writable(folder: Path) -> Path:
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
