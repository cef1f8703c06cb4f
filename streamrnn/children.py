"""Child processes that end with the process that started them, however it ends.

A command that starts processes (the demo's broker, daemon and simulator; the daemon's HTTP
endpoint; the benchmarks' stacks) stops them by pid when it stops in order. When it is killed
outright (SIGKILL, the OOM killer) nothing of it runs any more, so each child asks the kernel, as it
starts, for a SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """preexec_fn: SIGTERM when the parent dies; if it died already, now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # it died between the fork and the prctl
        os.kill(os.getpid(), signal.SIGTERM)


def popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` of a child that is sent SIGTERM when this process dies. Call it from the
    thread that lives as long as the process (the kernel ties the signal to the forking thread)."""
    if sys.platform.startswith("linux"):
        parent = os.getpid()
        kwargs["preexec_fn"] = lambda: _die_with_parent(parent)
    return subprocess.Popen(args, **kwargs)


def stop(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> int:
    """Ask ``proc`` to end (``sig``), give it ``timeout`` seconds, then kill it; either way it is
    reaped (a Popen left running is a leak, and a ResourceWarning). Returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
