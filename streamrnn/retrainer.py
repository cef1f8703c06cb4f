"""Background retraining in a child process: serving never waits for it, and nothing it does can
stall, crash or corrupt the daemon.

The child is spawned (a fresh interpreter, no state shared with the engine), runs on the CPU time
serving leaves idle (SCHED_IDLE) with its own thread count, and sends back a
:class:`~streamrnn.trainer.Verdict` of plain arrays. A child that dies, or runs past
``trainer.deadline``, becomes a failed verdict.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import resource
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from streamrnn import trainer
from streamrnn.config import TrainerSettings
from streamrnn.model import ModelSpec
from streamrnn.trainer import Snapshot, TrainReport, Verdict

log = logging.getLogger(__name__)


@dataclass
class Job:
    snapshot: Snapshot
    process: mp.process.BaseProcess
    conn: Connection
    started: float


def _work(conn: Connection, parent: int) -> None:
    import torch

    threading.Thread(target=_orphan_watch, args=(parent,), daemon=True).start()
    snapshot, spec, champion, settings, seed = _recv(conn)
    _limit_memory(settings.max_memory)
    torch.set_num_threads(settings.threads or 1)
    state = {k: torch.as_tensor(v) for k, v in champion.items()}
    try:
        verdict = trainer.retrain(snapshot, spec, state, settings, seed)
    except Exception as e:  # out of memory, or a bug: the daemon is told what, and tries again later
        verdict = _failed(f"trainer raised {type(e).__name__}: {str(e)[:500]}")
    try:
        conn.send(verdict)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone; so is the reason to report
    conn.close()


def _background(pid: int) -> None:
    """Let process ``pid`` take only the CPU time that serving leaves idle: Linux's SCHED_IDLE class,
    which a process may put its own user's processes in, yields to every normal task at once; where
    it is missing, the lowest nice. Set by the parent as the child starts, so that its imports
    (torch: seconds of CPU) already run there."""
    try:
        os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError) as e:
        log.debug("SCHED_IDLE not available (%s): nice 19 instead", e)
    try:
        os.setpriority(os.PRIO_PROCESS, pid, 19)
    except OSError as e:
        log.warning("trainer keeps the daemon's CPU priority: %s", e)


def _limit_memory(mib: int | None) -> None:
    """Cap what the trainer may allocate beyond what it holds now (RLIMIT_DATA): past it, numpy and
    torch raise instead of the kernel's OOM killer choosing a victim, perhaps the daemon."""
    if mib is None:
        mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**21  # half the machine
    try:
        with open("/proc/self/status") as f:
            held = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
        resource.setrlimit(resource.RLIMIT_DATA, (held + mib * 2**20, resource.RLIM_INFINITY))
    except (OSError, ValueError, StopIteration) as e:  # not Linux, or not permitted: unlimited
        log.warning("trainer memory limit not set: %s", e)


def _orphan_watch(parent: int) -> None:
    """End the trainer when the daemon that started it dies (even by kill -9)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


class Retrainer:
    """At most one retrain at a time; ``poll()`` between steps returns its verdict once there is one."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.settings = settings
        self.ctx = mp.get_context("spawn")
        self.job: Job | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def start(self, snapshot: Snapshot, spec: ModelSpec, champion: dict, seed: int) -> None:
        """Fit on ``snapshot`` from the champion's weights (numpy arrays) in a child process."""
        if self.job is not None:
            raise RuntimeError("a retrain is already running")
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_work, args=(child, os.getpid()), name="streamrnn-trainer", daemon=True)
        p.start()  # with nothing big to pass, this returns before the child has imported anything
        _background(p.pid)
        child.close()
        # the snapshot goes over the pipe from a thread: the child reads it only once torch is
        # imported, and the engine thread must not wait for that
        threading.Thread(target=_send, args=(parent, (snapshot, spec, champion, self.settings, seed)), name="trainer-send", daemon=True).start()
        self.job = Job(snapshot, p, parent, time.monotonic())
        log.info("retrain started", extra={"pid": p.pid, "streams": len(snapshot.streams), "frames": snapshot.frames, "seed": seed})

    def poll(self) -> tuple[Snapshot, Verdict, float] | None:
        """The finished job's (snapshot, verdict, seconds), or None while it runs."""
        job = self.job
        if job is None:
            return None
        elapsed = time.monotonic() - job.started
        verdict: Verdict | None = None
        if job.conn.poll():
            try:
                verdict = job.conn.recv()
            except (EOFError, OSError) as e:
                verdict = _failed(f"trainer process ended without a verdict (exit code {job.process.exitcode}): {e}")
        elif not job.process.is_alive():
            job.process.join(0.1)
            if job.conn.poll():
                return self.poll()
            verdict = _failed(f"trainer process died (exit code {job.process.exitcode})")
        elif elapsed > self.settings.deadline:
            verdict = _failed(f"trainer passed its deadline of {self.settings.deadline:g} s and was killed")
        if verdict is None:
            return None
        self._end(job, wait=False)
        return job.snapshot, verdict, elapsed

    def close(self) -> None:
        if self.job is not None:
            self._end(self.job, wait=True)

    def _end(self, job: Job, wait: bool) -> None:
        """Kill the child if it is still there (done, it may be tearing torch down) and reap it: on a
        thread of its own unless ``wait``, as the kernel takes some 20 ms to free a trainer's memory
        and serving must not wait for that."""
        self.job = None
        job.conn.close()
        if job.process.is_alive():
            job.process.kill()
        if wait:
            job.process.join(5)
        else:
            threading.Thread(target=job.process.join, args=(5,), name="trainer-reap", daemon=True).start()


def _send(conn: Connection, job: tuple) -> None:
    """``job`` over the pipe with its arrays out of band (pickle protocol 5): they are written from
    where they lie, with the GIL released, instead of copied into one pickle under it first (20 ms
    of serving stalled at 1,000 streams)."""
    try:
        arrays: list[pickle.PickleBuffer] = []
        head = pickle.dumps(job, protocol=5, buffer_callback=arrays.append)
        conn.send((len(arrays), head))
        for a in arrays:
            conn.send_bytes(a.raw())
    except (OSError, TypeError, ValueError, pickle.PicklingError) as e:  # the child died, or the job ended and closed the pipe: poll() reports it
        log.warning("could not hand the snapshot to the trainer", extra={"error": str(e)})


def _recv(conn: Connection) -> tuple:
    n, head = conn.recv()
    return pickle.loads(head, buffers=[bytearray(conn.recv_bytes()) for _ in range(n)])  # writable arrays


def _failed(error: str) -> Verdict:
    return Verdict("failed", TrainReport(status="failed", error=error))
