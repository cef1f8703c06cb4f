"""What a fleet of shards keeps in NATS JetStream, and how MQTT topics map to NATS subjects.

A NATS server with its MQTT listener maps the MQTT topic ``plant/r1/sensors/level`` to the subject
``plant.r1.sensors.level`` and back (see :func:`subject`). The shards make, idempotently:

- the stream ``STREAMRNN_FORECASTS`` over the forecast subjects, which keeps each stream's last
  forecast and acknowledges each one published (so a shard publishes again what a dying server lost);
- the stream ``STREAMRNN_SENSORS`` over the sensor (and frame) subjects, which stores each message
  under ``streamrnn.partition.{p}.<subject>``, ``p`` the server's ``partition(P, stream)`` of the
  stream id: every message of a stream lands in the same partition, whatever its topic;
- the KV bucket ``streamrnn-fleet``: the live members (``member.<name>``), who holds each
  partition (``owner.<p>``) and who trains (``owner.trainer``), every key living ``shards.lease``
  seconds unless renewed;
- the object store ``streamrnn-state``: each partition's last checkpoint (``partition-<p>``) and
  the fleet's champion (``champion``; :mod:`streamrnn.fleet.fleetstore`);
- per partition, the durable consumer ``streamrnn-p<p>``, made afresh by the shard that takes the
  partition, from the message after its checkpoint.

The sensor stream also keeps each partition's clock ticks (``streamrnn.partition.{p}.clock``, no
payload): a shard that finds a partition quiet stores one, and closes the ticks of silent streams
only as the tick comes back through the consumer, in order, by JetStream's time of storing it. So
every close is in the stream, and whoever replays it closes the very same ticks.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from streamrnn.config import ConfigError, ShardSettings

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

STREAM = "STREAMRNN_SENSORS"
FORECASTS = "STREAMRNN_FORECASTS"
BUCKET = "streamrnn-fleet"
STATE = "streamrnn-state"
PREFIX = "streamrnn.partition"
CLOCK = "clock"  # the topic of a partition's clock tick, as :func:`where` reads its subject


def clock(partition: int) -> str:
    """The subject of ``partition``'s clock ticks, stored as it comes (no subject transform)."""
    return f"{PREFIX}.{partition}.{CLOCK}"


def subject(topic: str) -> str:
    """The NATS subject of an MQTT topic or filter, as the NATS server's MQTT listener maps them
    (``/`` -> ``.``, a ``.`` within a level -> ``//``, ``+`` -> ``*``, ``#`` -> ``>``)."""
    return ".".join({"+": "*", "#": ">"}.get(level, level.replace(".", "//")) for level in topic.split("/"))


def topic(subj: str) -> str:
    """The MQTT topic of a NATS subject (the inverse of :func:`subject` for topics)."""
    return "/".join(level.replace("\0", ".") for level in subj.replace("//", "\0").split("."))


def partitioned(templates: list[str], partitions: int) -> tuple[list[str], str, str]:
    """The stream's subjects, and the source and destination of its subject transform, for topic
    templates such as ``plant/{stream}/sensors/{feature}``. The templates must share what comes
    before ``{stream}`` (plain levels) and have a level after it. Raises ConfigError."""
    heads = set()
    for tpl in templates:
        levels = tpl.split("/")
        at = levels.index("{stream}")
        if "{feature}" in levels[:at] or at == len(levels) - 1:
            raise ConfigError(f"mqtt topic {tpl!r}: on nats://, {{stream}} must come before {{feature}} and not be the last level")
        heads.add("/".join(levels[:at]))
    if len(heads) != 1:
        why = f"they begin {sorted(heads)}"
        raise ConfigError(f"mqtt.sensor_topic and mqtt.frame_topic must begin alike before {{stream}} on nats:// ({why})")
    head = [subject(h) for h in heads if h]
    subjects = [subject("/".join("+" if lv in ("{stream}", "{feature}") else lv for lv in t.split("/"))) for t in templates]
    source = ".".join([*head, "*", ">"])
    destination = ".".join([PREFIX, f"{{{{partition({partitions},1)}}}}", *head, "{{wildcard(1)}}", ">"])
    return subjects, source, destination


def where(subj: str) -> tuple[int, str]:
    """The partition and MQTT topic of a subject as the stream stores it."""
    _, _, p, rest = subj.split(".", 3)
    return int(p), topic(rest)


async def prepare(nc: Client, templates: list[str], forecast_topic: str, cfg: ShardSettings) -> None:
    """Make the streams, the bucket and the object store where missing; refuse a sensor stream made
    for other subjects or another number of partitions (its checkpoints would hold the wrong streams)."""
    import nats
    from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig

    js = nc.jetstream()
    replicas = 3 if len(nc.servers) >= 3 else 1  # a cluster keeps three copies
    await _sensors(js, templates, cfg, replicas)
    try:
        await js.stream_info(FORECASTS)
    except nats.js.errors.NotFoundError:
        forecasts = subject("/".join("*" if lv == "{stream}" else lv for lv in forecast_topic.split("/")))
        kept = {"max_msgs_per_subject": 1, "max_age": cfg.retention, "storage": StorageType.FILE, "num_replicas": replicas}
        await js.add_stream(StreamConfig(name=FORECASTS, subjects=[forecasts], **kept))
    for name, make in (
        (BUCKET, lambda: js.create_key_value(KeyValueConfig(bucket=BUCKET, ttl=cfg.lease, history=1, replicas=replicas))),
        (STATE, lambda: js.create_object_store(STATE, ObjectStoreConfig(bucket=STATE, replicas=replicas))),
    ):
        try:
            await (js.key_value(name) if name == BUCKET else js.object_store(name))
        except nats.js.errors.NotFoundError:
            await make()


async def _sensors(js: JetStreamContext, templates: list[str], cfg: ShardSettings, replicas: int) -> None:
    import nats
    from nats.js.api import DiscardPolicy, StorageType, StreamConfig, SubjectTransform

    sensors, source, destination = partitioned(templates, cfg.partitions)
    subjects = [*sensors, clock("*")]
    try:
        info = await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        transform = SubjectTransform(src=source, dest=destination)
        kept = {"max_age": cfg.retention, "max_bytes": cfg.max_bytes, "discard": DiscardPolicy.OLD, "storage": StorageType.FILE}
        await js.add_stream(StreamConfig(name=STREAM, subjects=subjects, subject_transform=transform, num_replicas=replicas, **kept))
        log.info("stream made", extra={"stream": STREAM, "subjects": subjects, "partitions": cfg.partitions, "replicas": replicas})
        return
    t, had = info.config.subject_transform, sorted(info.config.subjects or [])
    if t is not None and t.dest == destination and had == sorted(sensors):  # made before the clock ticks
        info.config.subjects = subjects
        await js.update_stream(info.config)
        log.info("stream given the partitions' clock ticks", extra={"stream": STREAM, "subjects": subjects})
        return
    if t is None or t.dest != destination or had != sorted(subjects):
        made = f"subjects {info.config.subjects}, stored as {t.dest if t else 'they came'}"
        raise ConfigError(
            f"shards.partitions / mqtt topics: the JetStream stream {STREAM} was made for {made}, not {subjects} "
            f"stored as {destination}; run every shard with the same settings, or delete the stream to start afresh"
        )


async def consume(js: JetStreamContext, partition: int, after: int, ack_wait: float) -> tuple[JetStreamContext.PullSubscription, int]:
    """The partition's durable consumer, made afresh to deliver the messages after stream sequence
    ``after`` (all JetStream kept, for 0), in order, and how many wait for it; acknowledging one
    acknowledges those before it."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    durable = f"streamrnn-p{partition}"
    with contextlib.suppress(nats.js.errors.NotFoundError):  # none: the first time this partition is taken
        await js.delete_consumer(STREAM, durable)
    config = ConsumerConfig(
        durable_name=durable,
        ack_policy=AckPolicy.ALL,
        ack_wait=ack_wait,
        max_ack_pending=-1,
        filter_subject=f"{PREFIX}.{partition}.>",
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1,
    )
    info = await js.add_consumer(STREAM, config)
    return await js.pull_subscribe_bind(durable, STREAM), info.num_pending
