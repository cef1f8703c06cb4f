"""Background retraining in a child process: serving never waits for it, and nothing it does can
stall, crash or corrupt the daemon.

The child is spawned (a fresh interpreter, no state shared with the engine), runs on the CPU time
serving leaves idle (SCHED_IDLE) with its own thread count, and sends back a
:class:`~streamrnn.engine.snapshot.Verdict` of plain arrays. A child that dies, or runs past
``trainer.deadline``, becomes a failed verdict. A thread per job starts the child, writes the work
to it and waits for the verdict, so that the engine thread makes no system call for it: each may
let another thread take the GIL for up to a switch interval (figures under the bench's load:
CHANGELOG.md).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import resource
import threading
import time
from multiprocessing.connection import Connection

from streamrnn.config import TrainerSettings
from streamrnn.engine.model import ModelSpec
from streamrnn.engine.snapshot import Snapshot, TrainReport, Verdict
from streamrnn.learning import judge

log = logging.getLogger(__name__)


class Job:
    """One retrain. Its own thread starts the child, hands it the work and waits for the verdict,
    so that the engine thread never waits on the child or the pipe: it only reads ``verdict``."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.started = time.monotonic()
        self.process: mp.process.BaseProcess | None = None  # once the job's thread has started it
        self.verdict: Verdict | None = None
        self.cancelled = False
        self.lock = threading.Lock()  # orders a cancel against the child's start
        self.thread: threading.Thread | None = None

    def cancel(self) -> None:
        """Kill the child, now or as soon as it starts; the job's thread then reaps it."""
        with self.lock:
            self.cancelled = True
            if self.process is not None:
                self.process.kill()  # no system call once reaped


def _work(conn: Connection, parent: int) -> None:
    import torch

    threading.Thread(target=_orphan_watch, args=(parent,), daemon=True).start()
    snapshot, spec, champion, settings, seed = _recv(conn)
    _limit_memory(settings.max_memory)
    torch.set_num_threads(settings.threads or 1)
    state = {k: torch.as_tensor(v) for k, v in champion.items()}
    try:
        verdict = judge.retrain(snapshot, spec, state, settings, seed)
    except Exception as e:  # out of memory, or a bug: the daemon is told what, and tries again later
        verdict = _failed(f"trainer raised {type(e).__name__}: {str(e)[:500]}")
    try:
        conn.send(verdict)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon is gone; so is the reason to report
    conn.close()


def _background(pid: int, priority: str = "idle") -> None:
    """Set process ``pid``'s CPU priority (``trainer.priority``). ``idle``: only the CPU time that
    serving leaves idle: Linux's SCHED_IDLE class, which a process may put its own user's processes
    in, yields to every normal task at once; where it is missing, the lowest nice. ``low``: the
    lowest nice, a small share however busy the box. Set by the parent as the child starts, so that
    its imports (torch: seconds of CPU) already run there."""
    if priority == "normal":
        return
    if priority == "idle":
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
        """Fit on ``snapshot`` from the champion's weights (numpy arrays) in a child process. Returns
        at once: starting a process and writing megabytes to it are the job thread's to wait for."""
        if self.job is not None:
            raise RuntimeError("a retrain is already running")
        job = self.job = Job(snapshot)
        job.thread = threading.Thread(
            target=self._run, args=(job, (snapshot, spec, champion, self.settings, seed)), name="trainer", daemon=True
        )
        job.thread.start()

    def poll(self) -> tuple[Snapshot, Verdict, float] | None:
        """The finished job's (snapshot, verdict, seconds), or None while it runs. No system call:
        each one would hand the GIL to whichever thread wants it, for up to a switch interval."""
        job = self.job
        if job is None:
            return None
        elapsed = time.monotonic() - job.started
        verdict = job.verdict
        if verdict is None and elapsed > self.settings.deadline:
            verdict = _failed(f"trainer passed its deadline of {self.settings.deadline:g} s and was killed")
            job.cancel()
        if verdict is None:
            return None
        self.job = None
        return job.snapshot, verdict, elapsed

    def close(self) -> None:
        """Kill a running child and wait until it is reaped."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()
            assert job.thread is not None
            job.thread.join(10)

    def _run(self, job: Job, work: tuple) -> None:
        """The job's thread: start the child (spawned, so with nothing big to pass this returns before
        it has imported anything), send the work (it reads it once torch is imported), take the
        verdict, then kill and reap the child (done, it may still be tearing torch down, and the kernel
        takes its time to free the child's memory)."""
        parent, child = self.ctx.Pipe()
        p = self.ctx.Process(target=_work, args=(child, os.getpid()), name="streamrnn-trainer", daemon=True)
        try:
            with job.lock:
                if not job.cancelled:
                    p.start()
                    job.process = p
        except Exception as e:  # out of memory, or of processes: a failed retrain, tried again later
            log.error("trainer process could not start", exc_info=True)
            job.verdict = _failed(f"trainer process could not start: {type(e).__name__}: {e}")
        finally:
            child.close()
        if job.process is None:
            parent.close()
            return
        try:
            _background(p.pid, self.settings.priority)
            # the recurrent weights' retrain at info; the linear contender's refit alone, routine, at debug
            level, what = (logging.INFO, "retrain started") if work[0].recurrent else (logging.DEBUG, "linear refit started")
            log.log(level, what, extra={"pid": p.pid, "streams": len(work[0].streams), "frames": work[0].frames, "seed": work[-1]})
            _send(parent, work)
            job.verdict = parent.recv()
        except Exception as e:  # it died or was killed (EOF, a broken pipe), or sent what does not unpickle
            p.join(1.0)
            job.verdict = _failed(f"trainer process ended without a verdict (exit code {p.exitcode}): {type(e).__name__}: {e}")
        finally:
            parent.close()
            p.kill()  # done, it may still be tearing torch down
            p.join(5)


def _send(conn: Connection, job: tuple) -> None:
    """``job`` over the pipe with its arrays out of band (pickle protocol 5): they are written from
    where they lie, with the GIL released, instead of copied into one pickle under it first,
    which stalled serving at many streams."""
    arrays: list[pickle.PickleBuffer] = []
    head = pickle.dumps(job, protocol=5, buffer_callback=arrays.append)
    conn.send((len(arrays), head))
    for a in arrays:
        conn.send_bytes(a.raw())


def _recv(conn: Connection) -> tuple:
    n, head = conn.recv()
    return pickle.loads(head, buffers=[bytearray(conn.recv_bytes()) for _ in range(n)])  # writable arrays


def _failed(error: str) -> Verdict:
    return Verdict("failed", TrainReport(status="failed", error=error))
