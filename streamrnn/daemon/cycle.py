"""The champion-challenger cycle, as the daemon runs it: start a retrain in the trainer's process
when one is due, adopt its verdict between two steps, catch the adopted model up over the frames
that came meanwhile, a few a turn, and say when it serves. Serving never waits for any of it."""

from __future__ import annotations

import logging
import time

from streamrnn.config import Settings
from streamrnn.daemon import observe
from streamrnn.daemon.metrics import Metrics
from streamrnn.engine.engine import Engine
from streamrnn.learning.retrainer import Retrainer

log = logging.getLogger(__name__)

# stream-frames a turn catches an adopted model up over: the catch-up after a long retrain is
# spread over turns instead of stalling one (figures: docs/performance.md)
CATCH_UP = 192


class Cycle:
    """Retrains of one engine, in a child process (:class:`Retrainer`)."""

    def __init__(self, settings: Settings, engine: Engine, metrics: Metrics) -> None:
        self.settings, self.engine, self.metrics = settings, engine, metrics
        self.retrainer = Retrainer(settings.trainer)
        self._last = time.monotonic()

    def turn(self, stopping: bool) -> bool:
        """One turn's share of the cycle; True when an adopted model has begun to serve."""
        engine = self.engine
        if engine.adopting:  # no new retrain until the last verdict's model serves
            return engine.catch_up(CATCH_UP)
        done = self.retrainer.poll()
        if done is not None:
            return self._verdict(*done)
        if self.retrainer.busy or stopping:
            return False
        interval = self.settings.trainer.interval
        due = engine.retrain_due or (interval is not None and time.monotonic() - self._last >= interval and engine.retrain_ready)
        if due:
            self._last = time.monotonic()
            champion = {k: v.numpy() for k, v in engine.state_dict().items()}
            self.retrainer.start(engine.snapshot(), engine.spec, champion, engine.next_seed())
            self.metrics.retrain_running.set(1)
        elif engine.linear_due:
            self.retrainer.start(engine.snapshot(recurrent=False), engine.spec, {}, engine.next_seed())
        return False

    def _verdict(self, snap, verdict, seconds: float) -> bool:
        """Adopt a finished retrain's verdict (or the linear contender's fit alone); True if its
        model serves at once."""
        result = self.engine.adopt(snap, verdict, at_once=False)
        if snap.lookback:
            self.metrics.linear_fits.labels("fitted" if verdict.linear is not None else "failed").inc()
        if result.outcome == "linear":  # the linear contender alone
            log.debug("linear refit done", extra={"seconds": round(seconds, 2), "linear": verdict.report.linear})
            return False
        observe.retrain(self.metrics, verdict, seconds, result.outcome)
        log.info("retrain done", extra=said(verdict, result.outcome, seconds, model_version=result.version))
        return verdict.serve is not None and not self.engine.adopting

    def close(self) -> None:
        self.retrainer.close()


def said(verdict, outcome: str, seconds: float, **more) -> dict:
    """A retrain's log fields: its outcome, seconds, error and the held-out errors it was judged by."""
    held_out = {f"{k}_error": getattr(verdict, f"{k}_error") for k in ("challenger", "champion", "persistence")}
    extra = {"outcome": outcome, "seconds": round(seconds, 2), **more, "error": verdict.report.error}
    return {**extra, **{k: round(e, 4) if e == e else None for k, e in held_out.items()}}
