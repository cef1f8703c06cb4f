"""The ``streamrnn`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from streamrnn import __version__, config
from streamrnn.offline import faults, simulator
from streamrnn.tools.bench import PARTS


def _positive(kind: type) -> object:
    """An argparse type: a number of ``kind`` above zero, or a usage error that says so."""

    def parse(text: str) -> int | float:
        try:
            x = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not x > 0:
            raise argparse.ArgumentTypeError(f"{text} must be above 0")
        return x

    parse.__name__ = kind.__name__
    return parse


POS_INT, POS_FLOAT = _positive(int), _positive(float)


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _settings(args: argparse.Namespace, **overrides: object) -> config.Settings:
    return config.load(getattr(args, "config", None), **overrides)


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).redacted(), indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    inject = faults.injector(args.faults, simulator.FEATURES, args.fault_seed)
    if args.csv:
        steps = args.steps or 5000
        rows = simulator.write_csv(args.csv, steps, args.streams, args.seed, args.key_every, inject)
        print(f"wrote {rows} rows ({args.streams} streams x {steps} steps) to {args.csv}")
        return 0
    if not args.broker:
        print("streamrnn simulate: give --csv FILE or --broker mqtt://host:port", file=sys.stderr)
        return 2
    from streamrnn.tools import feed

    return feed.publish(
        _settings(args), args.broker, args.streams, args.rate, args.seed, args.key_every, args.steps, args.duration, inject=inject
    )


def cmd_run(args: argparse.Namespace) -> int:
    from streamrnn import logs
    from streamrnn.daemon.daemon import Daemon
    from streamrnn.engine import model

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
    if settings.mqtt.url.lower().startswith("nats://"):  # a shard of a fleet on NATS JetStream
        from streamrnn.fleet.shard import Shard as Daemon
    return Daemon(settings, start, version).run()


def cmd_replay(args: argparse.Namespace) -> int:
    from streamrnn.engine import model
    from streamrnn.offline import plot, protocol, replay

    time_column = None if args.time_column == "none" else args.time_column
    table = replay.read_table(args.data, time_column, args.stream_column, args.period, _csv_list(args.sampled or ""))
    for why in table.dropped:
        print(f"streamrnn replay: {args.data}: {why}", file=sys.stderr)
    settings = _replay_settings(args, table)
    if args.fault_report:
        from streamrnn.offline import faultreport

        return faultreport.main(table, settings, args.inject, args.inject_seed, args.report)
    inject = faults.injector(args.inject, settings.channels, args.inject_seed)
    if inject is not None:
        table.values = inject.table(table.streams, table.ts, table.values, [table.columns.index(c) for c in settings.channels])
    plot_target = args.plot_target or settings.features.targets[-1]
    if args.plot:  # before the replay's minutes, not after
        plot.plotting()
        if plot_target not in settings.features.targets:
            raise config.ConfigError(f"--plot-target {plot_target!r} is not a target (targets: {', '.join(settings.features.targets)})")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (Path(tmp) / "forecasts.csv" if args.plot else None)
        start, version = model.load(args.model) if args.model else (None, 0)
        kw = dict(progress=not args.quiet and sys.stderr.isatty(), save_model=args.save_model, start=start, version=version)
        if args.protocol:
            rep, scores = protocol.run(table, settings, out=out, **kw)
            rep["protocol"] = {"name": args.protocol, "mse": scores}
        else:
            rep = replay.replay(table, settings, out, **kw)
        if not _said(args, rep, table, settings):
            return 1
        if args.report:
            replay.write_report(args.report, rep)
        if args.plot:
            step = min(args.plot_step or (settings.features.horizon + 1) // 2, settings.features.horizon)  # a middle step
            plot.plot(args.plot, out, rep, table, plot_target, step, args.plot_window)
    return 0


def _replay_settings(args: argparse.Namespace, table) -> config.Settings:
    """The replay's settings: the file's columns as inputs and targets, its period, the flags."""
    from streamrnn.offline import protocol

    inputs = _csv_list(args.inputs) if args.inputs else list(table.columns)
    targets = inputs if args.targets in (None, "all") else _csv_list(args.targets)
    if args.protocol and targets != inputs:
        raise config.ConfigError("--protocol online-tsf forecasts every input: leave --targets out")
    missing = [c for c in inputs + targets if c not in table.columns]
    if missing:
        raise config.ConfigError(f"{args.data} has no numeric column {missing} (it has: {', '.join(table.columns)})")
    features: dict[str, object] = {"inputs": inputs, "targets": targets, "period": table.period}
    if args.horizon is not None:
        features["horizon"] = args.horizon
    elif args.protocol:
        features["horizon"] = max(protocol.HORIZONS)
    overrides: dict[str, object] = {"features": features}
    if args.seed is not None:
        overrides["trainer"] = {"seed": args.seed}
    return _settings(args, **overrides)


def _said(args: argparse.Namespace, rep: dict, table, settings: config.Settings) -> bool:
    """Print the replay's tables; or, where nothing could be scored, say why instead (False)."""
    from streamrnn.offline import protocol, replay

    if not sum(sum(t["n"]) for t in rep["targets"].values()):
        h, need = settings.features.horizon, settings.trainer.min_frames
        print(
            f"streamrnn replay: {args.data} has {rep['frames']} frame(s) in {len(set(table.streams))} stream(s): too few to score a "
            f"forecast (each is scored when the frame it is for arrives, up to H = {h} steps later); the first retrain needs "
            f"trainer.min_frames = {need} frames of a stream",
            file=sys.stderr,
        )
        return False
    print(replay.format_table(rep))
    if not sum(rep["retrains"].values()):
        need = settings.trainer.min_frames
        print(f"\nno retrain: no stream reached trainer.min_frames = {need} frames; the untrained model is persistence")
    if args.protocol:
        print("\n" + protocol.format_table(rep["protocol"]["mse"]))
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    """A broker, simulated reactors and the daemon, forecasts live in the terminal."""
    from streamrnn.tools import demo

    try:
        return demo.run(args.broker, args.streams, args.rate, args.duration, args.config, shards=args.shards)
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


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default, where its text does not say it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and "default" not in text and action.default not in (None, False, "", argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrnn", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    levels = ["debug", "info", "warning", "error"]
    log_help = "debug, info, warning or error (run: daemon.log_level; others: warning)"
    p.add_argument("--log-level", choices=levels, help=log_help)
    common = argparse.ArgumentParser(add_help=False)  # options every command takes, before or after its name
    common.add_argument("--log-level", choices=levels, default=argparse.SUPPRESS, help=log_help)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common], formatter_class=_Help)

    config_help = "TOML file (STREAMRNN_* variables override it; none: the built-in reactor's defaults)"
    c = command("config", "print the effective configuration (secrets masked)")
    c.add_argument("--config", type=Path, help=config_help)
    c.set_defaults(func=cmd_config)

    s = command("simulate", "simulate reactors: to a CSV, or live to an MQTT broker")
    s.add_argument("--csv", type=Path, help="write frames to this CSV")
    s.add_argument("--broker", help="publish each sensor to its topic on this broker, mqtt://host:port")
    s.add_argument("--config", type=Path, help=config_help + "; its sensor topic template and broker credentials")
    s.add_argument("--rate", type=POS_FLOAT, default=1.0, help="frames per second of wall time (each one period apart in event time)")
    s.add_argument("--duration", type=POS_FLOAT, help="seconds to run (default: until stopped)")
    s.add_argument("--steps", type=POS_INT, help="frames per stream (default: 5000 to a CSV, unbounded live)")
    s.add_argument("--streams", type=POS_INT, default=1, help="reactors, each a stream of its own")
    s.add_argument("--seed", type=int, default=0, help="the simulation's seed: the same seed gives the same numbers")
    s.add_argument("--key-every", type=POS_INT, default=30, help="steps between two lab samples of the key variable")
    faults_help = "sensor faults, KIND:CHANNEL@START[+LENGTH][*SIZE][/STREAM],... (docs/model.md#broken-sensors)"
    s.add_argument("--faults", help=faults_help)
    s.add_argument("--fault-seed", type=int, default=0, help="the faults' seed")
    s.set_defaults(func=cmd_simulate)

    r = command("replay", "stream a CSV through the engine and score it")
    r.add_argument("data", type=Path, help="CSV file: a header row, a time column, numeric columns")
    r.add_argument("--config", type=Path, help=config_help)
    r.add_argument("--targets", help="comma-separated, or 'all' (default): every input")
    r.add_argument("--inputs", help="comma-separated (default: every numeric column)")
    r.add_argument("--horizon", type=POS_INT, help="forecast steps H (default: features.horizon, 48 with --protocol)")
    r.add_argument("--time-column", default="", help="default: the first column; 'none': rows are --period apart")
    r.add_argument("--stream-column", help="column naming the stream, for several in one file (default: one stream)")
    r.add_argument("--period", type=POS_FLOAT, help="seconds between rows (default: inferred from the time column)")
    r.add_argument("--sampled", help="comma-separated sample-and-hold columns: a repeated value is not a new measurement")
    r.add_argument("--seed", type=int, help="trainer seed (default: trainer.seed)")
    r.add_argument("--out", type=Path, help="forecasts CSV: stream,ts,target,step,value,lower,upper")
    r.add_argument("--report", type=Path, help="JSON report")
    r.add_argument("--save-model", type=Path, help="write the final serving model here (for streamrnn run --model)")
    r.add_argument("--model", type=Path, help="start from these weights instead of an untrained model")
    r.add_argument("--plot", type=Path, help="PNG: truth, forecast and band over the last --plot-window rows; skill by step")
    r.add_argument("--plot-target", help="target to plot (default: the last)")
    r.add_argument("--plot-step", type=POS_INT, help="forecast step to plot (default: the middle of the horizon)")
    r.add_argument("--plot-window", type=POS_INT, default=500, help="rows of the stream to plot, the last ones")
    r.add_argument("--inject", help=faults_help + ", applied to the file's values as they are read")
    r.add_argument("--inject-seed", type=int, default=0, help="the injected faults' seed")
    r.add_argument(
        "--fault-report",
        action="store_true",
        help="replay clean and with faults (--inject, or each kind at three onsets) and score every fault window beside the bounds",
    )
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument(
        "--protocol",
        choices=["online-tsf"],
        help="also score by the online forecasting protocol of the literature: every variable, normalised "
        "by the first 20 %% of the rows, the last 75 %% scored, MSE at H = 1, 24, 48 beside persistence "
        "and the linear family alone (default --horizon 48)",
    )
    r.set_defaults(func=cmd_replay)

    d = command("demo", "broker + simulated reactors + daemon, forecasts live in the terminal")
    d.add_argument("--config", type=Path, help=config_help)
    d.add_argument("--broker", help="use this broker (default: start an embedded one on loopback)")
    d.add_argument("--streams", type=POS_INT, default=3, help="simulated reactors")
    d.add_argument("--rate", type=POS_FLOAT, default=10.0, help="simulated frames per second per reactor")
    d.add_argument("--duration", type=POS_FLOAT, help="seconds to run (default: until Ctrl-C)")
    d.add_argument("--shards", type=int, default=0, help="N shards on a 3-server NATS cluster instead (the 'nats' extra)")
    d.set_defaults(func=cmd_demo)

    b = command("bench", "benchmarks, each figure beside its reference measured in the same run")
    b.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", *PARTS],
        help="all: ingest, latency, step, streams and memory; ingest: the daemon against a bare "
        "paho subscriber; latency: frame to forecast, idle and retraining; step: stateful step against "
        "re-running a window; streams: time per tick up to 10,000 streams (CPU and GPU); memory: "
        "bytes per stream; scrape: the step loop under /metrics scrapers; journal: its cost; soak: "
        "memory over a long run; scaleout: 1, 2 and 3 shards on NATS beside the MQTT daemon (the 'nats' extra)",
    )
    b.add_argument("--quick", action="store_true", help="a seconds-long smoke of each part (what CI runs)")
    b.add_argument("--streams", type=POS_INT, help="simulated streams (default 10; latency: 1, 100, 1,000; scaleout: 100)")
    b.add_argument("--rate", type=POS_FLOAT, default=10.0, help="frames per second per stream")
    b.add_argument("--minutes", type=POS_FLOAT, default=30.0, help="soak: length of the run")
    b.add_argument("--warmup", type=POS_FLOAT, default=5.0, help="soak: minutes before memory must stay flat")
    b.add_argument("--clients", type=POS_INT, default=100, help="concurrent scrapers")
    b.add_argument("--seconds", type=POS_FLOAT, help="length of each phase (default: 20 for latency, 10 for scrape and journal)")
    b.add_argument(
        "--messages",
        type=POS_FLOAT,
        default=3500.0,
        help="latency: sensor messages per second at most (ticks of 10 Hz at most); at 7,000 a daemon "
        "of 1,000 streams on 2 cores falls behind, and its latency is then its queue's",
    )
    b.add_argument(
        "--rounds",
        type=POS_INT,
        default=3,
        help="rounds of the parts that alternate phases (ingest, latency, scrape, journal): medians over them",
    )
    b.add_argument("--json", action="store_true", help="machine-readable report")
    b.set_defaults(func=cmd_bench)

    n = command("run", "the daemon: sensors in over MQTT, forecasts out")
    n.add_argument("--config", type=Path, help=config_help)
    n.add_argument("--broker", help="mqtt://host:port (default: mqtt.url)")
    n.add_argument("--instance", help="client id and status topic (default: mqtt.instance)")
    n.add_argument(
        "--metrics-port", type=int, help="serve /metrics, /healthz, /readyz on this port, 0: any free one (default: daemon.metrics_port)"
    )
    n.add_argument("--model", type=Path, help="start from these weights (saved by replay --save-model; default: untrained)")
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
    except KeyboardInterrupt:  # Ctrl-C: what was being written is left as it was (atomic.py)
        print(f"streamrnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
