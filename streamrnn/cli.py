"""The ``streamrnn`` command."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamrnn import __version__, config, simulator
from streamrnn.tools.bench import PARTS


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _settings(args: argparse.Namespace, **overrides: object) -> config.Settings:
    return config.load(getattr(args, "config", None), **overrides)


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).redacted(), indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.csv:
        steps = args.steps or 5000
        rows = simulator.write_csv(args.csv, steps, args.streams, args.seed, args.key_every)
        print(f"wrote {rows} rows ({args.streams} streams x {steps} steps) to {args.csv}")
        return 0
    if not args.broker:
        print("streamrnn simulate: give --csv FILE or --broker mqtt://host:port", file=sys.stderr)
        return 2
    from streamrnn.mqtt import Publisher

    settings = _settings(args)
    tpl = settings.mqtt.sensor_topic
    pub = Publisher(args.broker, f"streamrnn-sim-{os.getpid()}", cfg=settings.mqtt)  # its credentials and TLS
    reactor = simulator.Reactor(args.streams, args.seed, args.key_every)
    names = simulator.stream_names(args.streams)
    topics = [[tpl.format(stream=s, feature=f) for f in simulator.FEATURES] for s in names]
    rng = random.Random(args.seed)
    start, sent, step = time.monotonic(), 0, 0
    stop = _stop_on_signals()
    print(f"publishing {args.streams} reactors x {len(simulator.FEATURES)} sensors at {args.rate:g} frames/s to {args.broker}", flush=True)
    try:
        while (
            not stop.is_set()
            and (args.steps is None or step < args.steps)
            and (args.duration is None or time.monotonic() - start < args.duration)
        ):
            ts, values = reactor.step()
            batch = [(topics[i][j], v) for i in range(args.streams) for j, v in enumerate(values[i]) if math.isfinite(v)]
            rng.shuffle(batch)  # sensors do not report in a fixed order
            for topic, v in batch:
                pub.publish(topic, json.dumps({"ts": ts, "value": v}).encode())
            sent += len(batch)
            step += 1
            stop.wait(max(0.0, start + step / args.rate - time.monotonic()))
    finally:
        pub.close()
    print(f"published {sent} messages, {step} frames per stream", flush=True)
    return 0


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: stop.set())
    return stop


def cmd_run(args: argparse.Namespace) -> int:
    from streamrnn import logs, model
    from streamrnn.daemon import Daemon

    overrides: dict[str, dict[str, object]] = {}
    if args.broker:
        overrides.setdefault("mqtt", {})["url"] = args.broker
    if args.instance:
        overrides.setdefault("mqtt", {})["instance"] = args.instance
    if args.metrics_port is not None:
        overrides.setdefault("daemon", {})["metrics_port"] = args.metrics_port
    settings = _settings(args, **overrides)
    logs.setup(settings.daemon.log_format, args.log_level or settings.daemon.log_level)
    start, version = None, 0
    if args.model:
        start, version = model.load(args.model)
    return Daemon(settings, start, version).run()


def cmd_replay(args: argparse.Namespace) -> int:
    from streamrnn import model, protocol, replay

    time_column = None if args.time_column == "none" else args.time_column
    table = replay.read_table(args.data, time_column, args.stream_column, args.period, _csv_list(args.sampled or ""))
    inputs = _csv_list(args.inputs) if args.inputs else list(table.columns)
    targets = inputs if args.targets in (None, "all") else _csv_list(args.targets)
    if args.protocol and targets != inputs:
        raise config.ConfigError("--protocol online-tsf forecasts every input: leave --targets out")
    missing = [c for c in inputs + targets if c not in table.columns]
    if missing:
        raise config.ConfigError(f"{args.data} has no numeric column {missing} (it has: {', '.join(table.columns)})")
    features: dict[str, object] = {"inputs": inputs, "targets": targets, "period": table.period}
    if args.horizon:
        features["horizon"] = args.horizon
    elif args.protocol:
        features["horizon"] = max(protocol.HORIZONS)
    overrides: dict[str, object] = {"features": features}
    if args.seed is not None:
        overrides["trainer"] = {"seed": args.seed}
    settings = _settings(args, **overrides)
    out = args.out
    tmp = None
    if args.plot and not out:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name) / "forecasts.csv"
    start, version = model.load(args.model) if args.model else (None, 0)
    kw = dict(progress=not args.quiet and sys.stderr.isatty(), save_model=args.save_model, start=start, version=version)
    if args.protocol:
        rep, scores = protocol.run(table, settings, out=out, **kw)
        rep["protocol"] = {"name": args.protocol, "mse": scores}
    else:
        rep = replay.replay(table, settings, out, **kw)
    print(replay.format_table(rep))
    if args.protocol:
        print("\n" + protocol.format_table(rep["protocol"]["mse"]))
    if args.report:
        replay.write_report(args.report, rep)
    if args.plot:
        target = args.plot_target or settings.features.targets[-1]
        replay.plot(args.plot, out, rep, table, target, min(args.plot_step, settings.features.horizon))
    if tmp:
        tmp.cleanup()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """A broker, simulated reactors and the daemon, forecasts live in the terminal."""
    from streamrnn.tools import demo

    try:
        return demo.run(args.broker, args.streams, args.rate, args.duration, args.config)
    except (RuntimeError, TimeoutError, ConnectionError) as e:
        print(f"streamrnn demo: {e}", file=sys.stderr)
        return 1


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks on real processes; each figure against its reference in the same run."""
    from streamrnn.tools import bench

    return bench.run(
        args.what,
        args.json,
        quick=args.quick,
        streams=args.streams,
        rate=args.rate,
        rounds=args.rounds,
        messages=args.messages,
        clients=args.clients,
        seconds=args.seconds,
        minutes=args.minutes,
        warmup=args.warmup,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrnn", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    p.add_argument("--log-level", help="debug, info, warning or error (run: daemon.log_level; others: warning)")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    c.add_argument("--config", type=Path, help="TOML file (STREAMRNN_* variables override it)")
    c.set_defaults(func=cmd_config)

    s = sub.add_parser("simulate", help="simulate reactors: to a CSV, or live to an MQTT broker")
    s.add_argument("--csv", type=Path, help="write frames to this CSV")
    s.add_argument("--broker", help="publish each sensor to its topic on this broker, mqtt://host:port")
    s.add_argument("--config", type=Path, help="TOML file: the sensor topic template")
    s.add_argument("--rate", type=float, default=1.0, help="frames per second of wall time (each one period apart in event time)")
    s.add_argument("--duration", type=float, help="seconds to run (default: until stopped)")
    s.add_argument("--steps", type=int, help="frames per stream (default: 5000 to a CSV, unbounded live)")
    s.add_argument("--streams", type=int, default=1)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--key-every", type=int, default=30, help="steps between two lab samples of the key variable")
    s.set_defaults(func=cmd_simulate)

    r = sub.add_parser("replay", help="stream a CSV through the engine and score it")
    r.add_argument("data", type=Path)
    r.add_argument("--config", type=Path)
    r.add_argument("--targets", help="comma-separated, or 'all' (default): every input")
    r.add_argument("--inputs", help="comma-separated (default: every numeric column)")
    r.add_argument("--horizon", type=int, help="forecast steps H")
    r.add_argument("--time-column", default="", help="default: the first column; 'none': rows are --period apart")
    r.add_argument("--stream-column", help="column naming the stream, for several in one file")
    r.add_argument("--period", type=float, help="seconds between rows (default: inferred from the time column)")
    r.add_argument("--sampled", help="comma-separated sample-and-hold columns: a repeated value is not a new measurement")
    r.add_argument("--seed", type=int, help="trainer seed")
    r.add_argument("--out", type=Path, help="forecasts CSV: stream,ts,target,step,value,lower,upper")
    r.add_argument("--report", type=Path, help="JSON report")
    r.add_argument("--save-model", type=Path, help="write the final serving model here (for streamrnn run --model)")
    r.add_argument("--model", type=Path, help="start from these weights instead of an untrained model")
    r.add_argument("--plot", type=Path, help="PNG: truth, forecast and band; skill by horizon")
    r.add_argument("--plot-target", help="target to plot (default: the last)")
    r.add_argument("--plot-step", type=int, default=1, help="forecast step to plot")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--protocol",
        choices=["online-tsf"],
        help="also score by the online forecasting protocol of the literature: every variable, normalised "
        "by the first 20 %% of the rows, the last 75 %% scored, MSE at H = 1, 24, 48 beside persistence "
        "and the linear family alone (default --horizon 48)",
    )
    r.set_defaults(func=cmd_replay)

    d = sub.add_parser("demo", help="broker + simulated reactors + daemon, forecasts live in the terminal")
    d.add_argument("--config", type=Path)
    d.add_argument("--broker", help="use this broker (default: start an embedded one on loopback)")
    d.add_argument("--streams", type=int, default=3)
    d.add_argument("--rate", type=float, default=10.0, help="simulated frames per second per reactor")
    d.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="benchmarks, each figure beside its reference measured in the same run")
    b.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", *PARTS],
        help="all (default): ingest, latency, step, streams and memory; ingest: the daemon against a bare "
        "paho subscriber; latency: frame to forecast, idle and retraining; step: stateful step against "
        "re-running a window; streams: time per tick up to 10,000 streams (CPU and GPU); memory: "
        "bytes per stream; scrape: the step loop under /metrics scrapers; journal: its cost; soak: "
        "memory over a long run",
    )
    b.add_argument("--quick", action="store_true", help="a seconds-long smoke of each part (what CI runs)")
    b.add_argument("--streams", type=int, default=10)
    b.add_argument("--rate", type=float, default=10.0, help="frames per second per stream")
    b.add_argument("--minutes", type=float, default=30.0, help="soak: length of the run")
    b.add_argument("--warmup", type=float, default=5.0, help="soak: minutes before memory must stay flat")
    b.add_argument("--clients", type=int, default=100, help="concurrent scrapers")
    b.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    b.add_argument(
        "--messages",
        type=float,
        default=3500.0,
        help="latency: sensor messages per second at most (ticks of 10 Hz at most); at 7,000 a daemon "
        "of 1,000 streams on 2 cores falls behind, and its latency is then its queue's",
    )
    b.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the parts that alternate phases (ingest, latency, scrape, journal): medians over them",
    )
    b.add_argument("--json", action="store_true", help="machine-readable report")
    b.set_defaults(func=cmd_bench)

    n = sub.add_parser("run", help="the daemon: sensors in over MQTT, forecasts out")
    n.add_argument("--config", type=Path, help="TOML file (STREAMRNN_* variables override it)")
    n.add_argument("--broker", help="mqtt://host:port (overrides mqtt.url)")
    n.add_argument("--instance", help="overrides mqtt.instance (client id and status topic)")
    n.add_argument("--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port (0: any free one)")
    n.add_argument("--model", type=Path, help="start from these weights (saved by replay --save-model)")
    n.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "warning").upper(), format="%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"
    )
    try:
        return args.func(args)
    except config.ConfigError as e:
        print(f"streamrnn: {e}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"streamrnn {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
