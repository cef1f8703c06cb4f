"""The broker: MQTT (its URL, credentials, TLS, topics, queues) and NATS JetStream's shards."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from streamrnn.config.base import AFile, ConfigError, Section


class MqttSettings(Section):
    """The broker connection and the topic templates (``{stream}``, ``{feature}``, ``{instance}``)."""

    url: str = "mqtt://127.0.0.1:1883"
    instance: str = Field("default", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="names this daemon in its client id and status topic")
    client_id: str | None = Field(None, max_length=128, description="default streamrnn-{instance}; fixed, so the broker keeps the session")
    username: str | None = None
    password: SecretStr | None = Field(None, description="better: password_file, or STREAMRNN_MQTT__PASSWORD; never printed")
    password_file: AFile | None = Field(
        None, description="file whose first line is the password (a systemd credential, a Kubernetes secret)"
    )
    tls_ca: AFile | None = Field(
        None, description="mqtts://: CA certificates the broker's certificate must chain to (default: the system's)"
    )
    tls_cert: AFile | None = Field(None, description="mqtts://: client certificate, for brokers that require one")
    tls_key: AFile | None = Field(None, description="mqtts://: the client certificate's private key")
    sensor_topic: str = "plant/{stream}/sensors/{feature}"
    frame_topic: str | None = "plant/{stream}/frame"
    forecast_topic: str = "plant/{stream}/forecast"
    status_topic: str = "streamrnn/{instance}/status"
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(30, ge=5, le=3600)
    reconnect_min: float = Field(0.5, gt=0, description="seconds before the first reconnect attempt")
    reconnect_max: float = Field(30.0, gt=0, description="cap of the exponential, jittered reconnect backoff")
    max_payload: int = Field(65536, ge=64, description="bytes; larger payloads are refused")
    queue_size: int = Field(100_000, ge=1, description="messages held between the MQTT client and the engine")
    max_inflight: int = Field(1000, ge=1, le=65000, description="forecasts on the wire not yet acknowledged by the broker")
    out_queue: int = Field(
        50_000, ge=1, le=65000, description="forecasts held by the client, e.g. while disconnected (MQTT ids are 16 bits)"
    )
    accept_retained: bool = Field(
        False,
        description="take retained sensor messages (the broker's last value, replayed at each subscribe) as readings; "
        "by default they are old news, refused as 'retained'",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        check_url(v)
        return v

    @model_validator(mode="after")
    def _templates(self) -> MqttSettings:
        for name, need in (("sensor_topic", ("{stream}", "{feature}")), ("frame_topic", ("{stream}",)), ("forecast_topic", ("{stream}",))):
            tpl = getattr(self, name)
            if tpl is None:
                continue
            for part in need:
                if tpl.count(part) != 1:
                    raise ValueError(f"{name} {tpl!r} must contain {part} exactly once")
            for level in tpl.split("/"):
                if level not in need and any(c in level for c in "{}+#"):
                    raise ValueError(f"{name} {tpl!r}: a placeholder must fill a whole topic level")
        if "{stream}" in self.status_topic or any(c in self.status_topic for c in "+#"):
            raise ValueError(f"status_topic {self.status_topic!r} may use only {{instance}}")
        if self.reconnect_max < self.reconnect_min:
            raise ValueError("reconnect_max must not be below reconnect_min")
        tls = [name for name in ("tls_ca", "tls_cert", "tls_key") if getattr(self, name) is not None]
        if tls and not broker_address(self.url)[2]:
            raise ValueError(f"{', '.join(tls)} set, but url {self.url!r} is not mqtts://: TLS would not be used")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            given = "password_file" if self.password_file is not None else "password"
            raise ValueError(f"{given} set without username: MQTT sends a password only with a user name, so it would be ignored")
        return self

    def secret(self) -> str | None:
        """The password, from ``password`` or the first line of ``password_file``."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return (self.password_file.read_text().splitlines() or [""])[0]
        return None


def check_url(url: str) -> None:
    """Refuse what is not ``mqtt[s]://host[:port]`` or ``nats://host[:port]``; credentials in it above all, which would be
    shown wherever the URL is (logs, ``streamrnn config``, process lists). Raises ValueError."""
    u = urlsplit(url)
    if "@" in u.netloc:
        raise ValueError(
            "credentials do not go in the URL: give mqtt.username, and the password in mqtt.password_file or STREAMRNN_MQTT__PASSWORD"
        )
    if u.scheme not in ("mqtt", "tcp", "mqtts", "ssl", "nats") or not u.hostname:
        raise ValueError("must look like mqtt://host:port (or mqtts:// for TLS, nats:// for NATS JetStream)")
    try:
        _ = u.port  # raises on a port out of range or not a number
    except ValueError as e:
        raise ValueError(str(e)) from None


def redact_url(url: str) -> str:
    """The URL with any user and password replaced, for messages about a URL that was refused."""
    u = urlsplit(url)
    return u._replace(netloc="***@" + u.netloc.rsplit("@", 1)[1]).geturl() if "@" in u.netloc else url


def broker_address(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of an ``mqtt://`` or ``mqtts://`` URL, with the standard ports as defaults."""
    try:
        check_url(url)
    except ValueError as e:
        raise ConfigError(f"broker URL {redact_url(url)!r}: {e}") from None
    u = urlsplit(url)
    tls = u.scheme in ("mqtts", "ssl")
    return u.hostname or "127.0.0.1", u.port or (8883 if tls else 1883), tls


class ShardSettings(Section):
    """Scale-out on NATS JetStream (``nats://`` URLs): the partitions streams map to, and the leases
    by which shards hold them."""

    partitions: int = Field(
        16,
        ge=1,
        le=1024,
        description="partitions the streams map to by stream id: at least the most shards you will run; fixed once the stream is made",
    )
    lease: float = Field(
        10.0,
        ge=1.0,
        le=600.0,
        description="seconds a shard's membership and claims live unrenewed: how long a dead shard's partitions wait for another",
    )
    retention: float = Field(86400.0, gt=0, description="seconds JetStream keeps sensor messages, acknowledged or not")
    max_bytes: int = Field(1 << 30, ge=1 << 20, description="bytes of sensor messages JetStream keeps at most, the oldest dropped first")
