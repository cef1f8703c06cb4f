"""``streamrnn bench``: every figure beside its reference, measured in the same run.

One module per part: ``ingest`` and ``latency`` (a raw publisher against the daemon, and against a
bare subscriber), ``engine`` (``step``, ``streams``, ``memory``: the engine in this process, beside
a bare torch step), ``scrape`` (the metrics endpoint under load), ``durability`` (``journal``,
``soak``), ``scaleout`` (1, 2, 3 shards on NATS JetStream beside the MQTT daemon). ``stack``
runs mosquitto, a daemon and the simulator for them; ``report`` holds what every report carries.
"""

from __future__ import annotations

import json
from collections.abc import Callable

DEFAULT = ("ingest", "latency", "step", "streams", "memory")  # what ``bench all`` runs
PARTS = (*DEFAULT, "scrape", "journal", "soak", "scaleout")


def _parts(
    quick: bool,
    streams: int | None,
    rate: float,
    rounds: int,
    messages: float,
    clients: int,
    seconds: float | None,
    minutes: float,
    warmup: float,
) -> dict[str, tuple[Callable[[], dict], Callable[[dict], str]]]:
    """Per part, how to run it with these options (``quick``: the seconds-long smoke CI runs) and
    how to print it."""
    from streamrnn.tools.bench import durability, engine, ingest, latency, scaleout, scrape

    many = streams or (8 if quick else 100)  # scaleout: enough streams to spread over the partitions
    given, streams = streams, streams or 10
    burst = 30 if quick else max(2, 10_000 // streams)  # ticks: 140,000 sensor messages at any count of streams
    return {
        "ingest": (lambda: ingest.ingest(streams, burst, 1 if quick else rounds), ingest.format_ingest),
        "latency": (
            lambda: latency.latency(
                (1, 10) if quick else (given,) if given else (1, 100, 1000),
                seconds or (3.0 if quick else 20.0),
                rounds=1 if quick else rounds,
                min_ticks=8 if quick else 30,
                rate_msgs=messages,
            ),
            latency.format_latency,
        ),
        "step": (
            lambda: engine.step((1, 10) if quick else (1, 100, 1000), ("gru",) if quick else ("gru", "lstm", "rnn"), 20 if quick else 200),
            engine.format_step,
        ),
        "streams": (lambda: engine.streams((1, 10) if quick else (1, 10, 100, 1000, 10_000), 5 if quick else 20), engine.format_streams),
        "memory": (lambda: engine.memory((10,) if quick else (100, 1000, 5000), (256,) if quick else (256, 4096)), engine.format_memory),
        "scrape": (lambda: scrape.scrape(streams, rate, clients, seconds or 10.0, rounds), scrape.format_scrape),
        "journal": (lambda: durability.journal(streams, rate, seconds or 10.0, rounds), durability.format_journal),
        "soak": (lambda: durability.soak(minutes, warmup, streams, rate), durability.format_soak),
        "scaleout": (
            lambda: scaleout.scaleout(
                (1, 2) if quick else (1, 2, 3), many, 20 if quick else 100, 1 if quick else rounds, messages, 3.0 if quick else 30.0
            ),
            scaleout.format_scaleout,
        ),
    }


def run(what: str, as_json: bool = False, **options) -> int:
    """Run one part, or ``all`` (the default ones), printing each table as it is done, or one JSON
    report at the end; 1 where the soak found memory that did not stay flat."""
    from streamrnn.tools.bench.report import machine

    parts = _parts(**options)
    names = list(DEFAULT) if what == "all" else [what]
    report: dict = {"machine": machine()}
    for name in names:
        measure, text = parts[name]
        report[name] = measure()
        if not as_json:
            print(text(report[name]) + "\n", flush=True)
    if as_json:
        print(json.dumps(report if what == "all" else {"machine": report["machine"], **report[what]}, indent=2))
    return 0 if report.get("soak", {}).get("flat", True) else 1
