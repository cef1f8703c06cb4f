"""The ``streamrnn`` command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from streamrnn import __version__, config, simulator


def _csv_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _settings(args: argparse.Namespace, **overrides: object) -> config.Settings:
    return config.load(getattr(args, "config", None), **overrides)


def cmd_config(args: argparse.Namespace) -> int:
    print(json.dumps(_settings(args).redacted(), indent=2))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if not args.csv:
        print("streamrnn simulate: --csv is required (publishing to MQTT comes with the daemon)", file=sys.stderr)
        return 2
    rows = simulator.write_csv(args.csv, args.steps, args.streams, args.seed, args.key_every)
    print(f"wrote {rows} rows ({args.streams} streams x {args.steps} steps) to {args.csv}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streamrnn import replay

    time_column = None if args.time_column == "none" else args.time_column
    table = replay.read_table(args.data, time_column, args.stream_column, args.period, _csv_list(args.sampled or ""))
    inputs = _csv_list(args.inputs) if args.inputs else list(table.columns)
    targets = inputs if args.targets in (None, "all") else _csv_list(args.targets)
    missing = [c for c in inputs + targets if c not in table.columns]
    if missing:
        raise config.ConfigError(f"{args.data} has no numeric column {missing} (it has: {', '.join(table.columns)})")
    features: dict[str, object] = {"inputs": inputs, "targets": targets, "period": table.period}
    if args.horizon:
        features["horizon"] = args.horizon
    overrides: dict[str, object] = {"features": features}
    if args.seed is not None:
        overrides["trainer"] = {"seed": args.seed}
    settings = _settings(args, **overrides)
    out = args.out
    tmp = None
    if args.plot and not out:
        tmp = tempfile.TemporaryDirectory()
        out = Path(tmp.name) / "forecasts.csv"
    rep = replay.replay(table, settings, out, progress=not args.quiet and sys.stderr.isatty())
    print(replay.format_table(rep))
    if args.report:
        replay.write_report(args.report, rep)
    if args.plot:
        target = args.plot_target or settings.features.targets[-1]
        replay.plot(args.plot, out, rep, table, target, min(args.plot_step, settings.features.horizon))
    if tmp:
        tmp.cleanup()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate a few reactors and replay them through the engine: a working forecast in a minute."""
    from streamrnn import replay

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "reactor.csv"
        rows = simulator.write_csv(data, args.steps, args.streams, args.seed)
        print(f"simulated {args.streams} reactors x {args.steps} steps ({rows} rows); replaying through the engine ...", flush=True)
        settings = config.load(args.config)
        table = replay.read_table(data, "ts", "stream", settings.features.period)
        rep = replay.replay(table, settings, progress=sys.stderr.isatty())
    print(replay.format_table(rep))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamrnn", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    c.add_argument("--config", type=Path, help="TOML file (STREAMRNN_* variables override it)")
    c.set_defaults(func=cmd_config)

    s = sub.add_parser("simulate", help="simulate the reactor")
    s.add_argument("--csv", type=Path, help="write frames to this CSV")
    s.add_argument("--steps", type=int, default=5000)
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
    r.add_argument("--plot", type=Path, help="PNG: truth, forecast and band; skill by horizon")
    r.add_argument("--plot-target", help="target to plot (default: the last)")
    r.add_argument("--plot-step", type=int, default=1, help="forecast step to plot")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_replay)

    d = sub.add_parser("demo", help="simulate reactors and replay them, printing the skill table")
    d.add_argument("--config", type=Path)
    d.add_argument("--streams", type=int, default=2)
    d.add_argument("--steps", type=int, default=3000)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s")
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
