"""The README's main job: `streamrnn demo` in a fresh virtualenv, after the README's install command."""

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import interruptible

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_in_a_fresh_virtualenv_shows_forecasts_within_30_seconds(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "torch==2.13.0", f"{ROOT}[demo]"]  # the README's command
    subprocess.run(pip, check=True, timeout=600, capture_output=True)
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "TMPDIR": str(tmp_path)}
    assert shutil.which("mosquitto", path=env["PATH"]) is None  # no broker installed on this path
    out = subprocess.run(
        [str(venv / "bin" / "streamrnn"), "demo", "--streams", "2", "--duration", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "metrics: http://127.0.0.1:" in text
    final = text[text.rindex("done") :]
    received = int(re.search(r"(\d+) forecasts;", final).group(1))
    assert received > 20, text[-2000:]
    for stream in ("reactor-01", "reactor-02"):
        assert re.search(rf"^{stream}\s+v\d+\s+skill\s+\S+\s+now [\d.]+\s+\+\d+ [\d.]+ ±\S+$", final, re.M), final
    left = subprocess.run(["pgrep", "-f", str(venv)], capture_output=True, text=True).stdout.split()
    assert not [p for p in left if int(p) != os.getpid()], "demo left processes behind"


def test_the_demo_in_an_80_column_terminal_never_wraps_and_its_charts_move(tmp_path):
    """The demo as a user sees it: in a pseudo-terminal 80 columns wide, every screen's lines fit,
    the banner stays on every screen, and the charts change as forecasts arrive."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 80, 0, 0))
    demo = interruptible(
        [sys.executable, "-m", "streamrnn", "demo", "--streams", "2", "--rate", "10"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the logs it keeps, with the test's files
        start_new_session=True,
    )
    os.close(slave)
    raw, charts, deadline = b"", [], time.monotonic() + 120
    try:
        while time.monotonic() < deadline and len({c for c in charts}) < 3:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    raw += os.read(master, 65536)
                except OSError:
                    break
            screens = raw.decode(errors="replace").split("\x1b[H\x1b[J")[1:-1]  # the last may be half written
            charts = ["\n".join(line for line in s.splitlines() if "┤" in line) for s in screens]
            charts = [c for c in charts if c]
            assert demo.poll() is None, raw.decode(errors="replace")[-3000:]
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        end = time.monotonic() + 150  # its stop gives the simulator, the daemon and the broker 20 s each at most
        while demo.poll() is None and time.monotonic() < end:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    raw += os.read(master, 65536)
                except OSError:
                    break
        assert demo.wait(max(10.0, end - time.monotonic())) == 0  # its terminal closed: it is ending
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        os.close(master)
    text = raw.decode(errors="replace")
    screens = text.split("\x1b[H\x1b[J")[1:]
    assert len(screens) >= 3, text[-2000:]
    for s in screens:
        assert "metrics: http://127.0.0.1:" in s and "Ctrl-C" in s, s  # the banner on every screen
        for line in s.split("\nstopping")[0].replace("\r", "").splitlines():  # what follows the view may be long (a path)
            assert len(line) < 80, f"{len(line)} columns: {line!r}"
    assert len(set(charts)) >= 3, "the charts did not change as forecasts arrived"
    assert re.search(r"^status: \S", screens[-2], re.M), screens[-2]
    assert "logs kept in" in text


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out.update(kids)
        todo += kids
    return out


def _alive(pids: set[int]) -> set[int]:
    left = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] != "Z":  # a zombie has ended
                    left.add(p)
        except OSError:
            continue
    return left


def _started_demo(tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    out = open(tmp_path / "demo.out", "w")
    demo = subprocess.Popen(
        [sys.executable, "-m", "streamrnn", "demo", "--streams", "1", "--rate", "5"],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the logs it keeps, with the test's files
    )
    out.close()
    deadline = time.monotonic() + 90
    kids: set[int] = set()
    while time.monotonic() < deadline:  # broker, daemon and simulator up, and the daemon's endpoint
        assert demo.poll() is None, (tmp_path / "demo.out").read_text()
        kids = _descendants(demo.pid)
        if len(kids) >= 4 and "forecasts;" in (tmp_path / "demo.out").read_text():
            return demo, kids
        time.sleep(0.5)
    demo.kill()
    raise AssertionError(f"the demo did not start: {(tmp_path / 'demo.out').read_text()[-2000:]}")


def _gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _alive(pids)
    for p in left:  # not to leave them to the next test
        os.kill(p, signal.SIGKILL)
    return left


def test_the_demo_stopped_by_sigterm_or_sighup_stops_every_process_it_started(tmp_path):
    for sig in (signal.SIGTERM, signal.SIGHUP):
        demo, kids = _started_demo(tmp_path)
        demo.send_signal(sig)
        assert demo.wait(60) == 0
        assert "stopping" in (tmp_path / "demo.out").read_text()
        assert not _gone(kids, 5.0), f"{sig.name}: the demo left processes behind"


def test_the_demo_killed_outright_takes_its_processes_with_it(tmp_path):
    demo, kids = _started_demo(tmp_path)
    demo.kill()
    demo.wait(10)
    assert not _gone(kids, 30.0), "children outlived a demo killed with SIGKILL"


def test_the_demo_with_shards_serves_every_stream_from_a_nats_cluster_and_stops_them_all(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "streamrnn", "demo", "--shards", "3", "--streams", "4", "--rate", "5", "--duration", "40"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    final = out.stdout[out.stdout.rindex("done") :]
    assert "3 shards on 3 NATS servers" in out.stdout
    held = re.search(r"3 shards, partitions held (\d+)/(\d+)/(\d+), (\d+) forecasts", final)
    assert held, final
    assert sum(int(n) for n in held.groups()[:3]) == 16 and all(int(n) > 0 for n in held.groups()[:3])  # each serves a share
    assert int(held.group(4)) > 40
    for stream in ("reactor-01", "reactor-02", "reactor-03", "reactor-04"):
        assert re.search(rf"^{stream}\s", final, re.M), final
    logs = next(tmp_path.glob("streamrnn-demo-*"))
    for i in range(3):
        log = (logs / f"daemon-shard-{i}.log").read_text()
        assert "partition claimed" in log and "level=error" not in log, log[-2000:]
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()  # the servers' configs
    assert not left, "the demo left NATS servers behind"
