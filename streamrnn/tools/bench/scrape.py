"""``bench scrape``: the step loop's speed with the metrics endpoint idle and under N concurrent
scrapers asking for ``/metrics`` back to back (keep-alive, gzip, as Prometheus asks), on a daemon fed
by the simulator through a real mosquitto, retraining off. Quiet and loaded phases alternate; the
figures are the medians of each kind. The scrapers run at nice 10 in a process of their own
(``python -m streamrnn.tools.bench.scrape``): on a plant they are other machines."""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamrnn import children
from streamrnn.tools.bench.stack import Stack, phase


def scrape(
    streams: int = 10, rate: float = 10.0, clients: int = 100, seconds: float = 10.0, rounds: int = 3, env: dict[str, str] | None = None
) -> dict:
    """Step time per frame and frame-to-forecast latency, quiet and under ``clients`` concurrent
    scrapers, in ``rounds`` of quiet then loaded phases and a last quiet one; medians of each kind."""
    quiet, loaded, scrapers = [], [], []
    with tempfile.TemporaryDirectory(prefix="streamrnn-bench-") as tmp:
        stack = Stack(Path(tmp), streams, rate, env)
        try:
            stack.wait_for("streamrnn_frames_closed_total", streams * rate * 3, 90)  # past the warm-up
            for _ in range(rounds):
                quiet.append(phase(stack, seconds))
                cmd = [
                    sys.executable,
                    "-m",
                    "streamrnn.tools.bench.scrape",
                    "_scrapers",
                    "--port",
                    str(stack.port),
                    "--clients",
                    str(clients),
                ]
                load = children.popen(
                    ["nice", "-n", "10", *cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )  # until stdin closes
                time.sleep(1.0)  # every scraper connected
                loaded.append(phase(stack, seconds))  # its own two scrapes wait their turn among the load's
                scrapers.append(json.loads(load.communicate(timeout=60)[0]))
            quiet.append(phase(stack, seconds))
        finally:
            stack.close()
    med = lambda phases, k: statistics.median(p[k] for p in phases)
    keys = ("frames", "steps", "step_ms", "step_ms_per_frame", "latency_ms")
    q, ld = {k: med(quiet, k) for k in keys}, {k: med(loaded, k) for k in keys}
    return {
        "streams": streams,
        "rate": rate,
        "clients": clients,
        "seconds": seconds,
        "rounds": rounds,
        "quiet": q,
        "loaded": ld,
        "phases": {"quiet": quiet, "loaded": loaded},
        "scrapers": {k: statistics.median(s[k] for s in scrapers) for k in scrapers[0]},
        "step_ratio": ld["step_ms_per_frame"] / q["step_ms_per_frame"],
        "latency_ratio": ld["latency_ms"] / q["latency_ms"],
    }


def format_scrape(r: dict) -> str:
    out = [
        f"scrape load: {r['streams']} streams at {r['rate']:g} frames/s; {r['rounds']} rounds of {r['seconds']:g} "
        f"s quiet, {r['seconds']:g} s loaded; medians",
        f"{'phase':<14}{'frames':>8}{'steps':>8}{'step ms':>10}{'step ms/frame':>15}{'latency ms':>12}",
    ]
    for name, p in (("quiet", r["quiet"]), (f"{r['clients']} scrapers", r["loaded"])):
        out.append(
            f"{name:<14}{p['frames']:>8.0f}{p['steps']:>8.0f}{p['step_ms']:>10.3f}{p['step_ms_per_frame']:>15.3f}{p['latency_ms']:>12.3f}"
        )
    s = r["scrapers"]
    out.append(
        f"scrapes answered: {s['per_second']:.0f}/s, errors {s['errors']:.0f}, p50 {s['p50_ms']:.1f} "
        f"ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.1f} ms"
    )
    out.append(f"step time per frame, loaded / quiet: {r['step_ratio']:.3f}   mean latency, loaded / quiet: {r['latency_ratio']:.3f}")
    return "\n".join(out)


def _scrapers(port: int, clients: int) -> dict:
    """``clients`` threads, each scraping /metrics back to back over one keep-alive connection,
    until stdin closes."""
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    times: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})  # as Prometheus asks
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[i] += 1
                    continue
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            times[i].append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    flat = sorted(x for ts in times for x in ts)
    q = lambda p: 1e3 * flat[min(len(flat) - 1, int(p * len(flat)))] if flat else float("nan")
    return {
        "scrapes": len(flat),
        "per_second": len(flat) / took,
        "errors": sum(errors),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "max_ms": 1e3 * flat[-1] if flat else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m streamrnn.tools.bench.scrape _scrapers ...``: the load generator, in its own process."""
    p = argparse.ArgumentParser(prog="python -m streamrnn.tools.bench.scrape")
    p.add_argument("what", choices=["_scrapers"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--clients", type=int, default=100)
    args = p.parse_args(argv)
    print(json.dumps(_scrapers(args.port, args.clients)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
