"""TLS, passwords and the shipped ACL against a real mosquitto; secrets never shown."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DaemonProcess, write_config
from test_daemon import drain, publish_rows, sim_rows

from streamrnn import config
from streamrnn.tools.broker import Mosquitto
from streamrnn.transport.mqtt import Publisher, Subscriber

pytestmark = pytest.mark.broker
DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PASSWORDS = {"streamrnn": "Daemon-Pa55-7kq", "gateway": "Gateway-Pa55-3xz", "reader": "Reader-Pa55-9wv"}


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def pki(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed; and a second, unrelated CA."""
    folder.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=streamrnn test CA", cwd=folder)
    openssl("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "2", "-subj", "/CN=another CA", cwd=folder)
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=folder,
    )
    return {"ca": folder / "ca.crt", "other": folder / "other.crt", "server": folder / "server.crt", "server_key": folder / "server.key"}


@pytest.fixture
def secured(tmp_path):
    """mosquitto with the TLS, password and ACL lines of deploy/mosquitto-tls.conf (paths made local)."""
    certs = pki(tmp_path / "pki")
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, pw in PASSWORDS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    local = {
        "/etc/mosquitto/certs/ca.crt": certs["ca"],
        "/etc/mosquitto/certs/server.crt": certs["server"],
        "/etc/mosquitto/certs/server.key": certs["server_key"],
        "/etc/mosquitto/passwd": passwd,
        "/etc/mosquitto/streamrnn.acl": DEPLOY / "mosquitto.acl",
    }
    keys = (
        "cafile",
        "certfile",
        "keyfile",
        "tls_version",
        "require_certificate",
        "allow_anonymous",
        "password_file",
        "acl_file",
        "use_username_as_clientid",
    )
    lines = [line for line in (DEPLOY / "mosquitto-tls.conf").read_text().splitlines() if line.split(" ")[0] in keys]
    assert len(lines) == len(keys), "deploy/mosquitto-tls.conf lost a security setting"
    listener = "\n".join(lines) + "\n"
    for shipped, here in local.items():
        listener = listener.replace(shipped, str(here))
    broker = Mosquitto(tmp_path / "broker", listener=listener, tls=True).start()
    yield broker, certs
    broker.stop()


def client(url: str, user: str, ca: Path, password: str | None = None) -> config.MqttSettings:
    return config.load(None, mqtt={"url": url, "username": user, "password": password or PASSWORDS[user], "tls_ca": str(ca)}).mqtt


def test_over_tls_with_a_password_and_the_acl_the_daemon_works_and_refusals_are_explained(secured, tmp_path):
    broker, certs = secured
    ca = certs["ca"]
    (tmp_path / "pw").write_text(PASSWORDS["streamrnn"] + "\n")
    (tmp_path / "bad").write_text("Wr0ng-Pa55-Zq\n")
    mqtt = {
        "url": broker.url,
        "username": "streamrnn",
        "password_file": str(tmp_path / "pw"),
        "tls_ca": str(ca),
        "reconnect_min": 0.2,
        "reconnect_max": 1.0,
    }
    good = write_config(tmp_path / "good.toml", trainer={"enabled": False}, mqtt=mqtt)
    bad_pw = write_config(tmp_path / "badpw.toml", trainer={"enabled": False}, mqtt=mqtt | {"password_file": str(tmp_path / "bad")})
    bad_ca = write_config(tmp_path / "badca.toml", trainer={"enabled": False}, mqtt=mqtt | {"tls_ca": str(certs["other"])})
    reader = client(broker.url, "reader", ca)
    wrong = [
        DaemonProcess(tmp_path, broker.url, config=c, instance=i).launch() for c, i in ((bad_pw, "badpw"), (bad_ca, "badca"))
    ]  # never online
    d = DaemonProcess(tmp_path, broker.url, config=good, instance="tls", client=reader).start()
    try:
        # the reader may read, but not write sensors: the ACL drops it before the daemon sees it
        intruder = Publisher(broker.url, "t-intruder", cfg=reader)
        intruder.publish("plant/intruder/sensors/feed_flow", b'{"ts": 1767225600, "value": 1.0}')
        intruder.close()
        sub = Subscriber(broker.url, "t-reader", ["plant/+/forecast"], cfg=reader)
        pub = Publisher(broker.url, "t-gateway", cfg=client(broker.url, "gateway", ca))
        rows = sim_rows(streams=1, steps=30)
        publish_rows(pub, rows, rate=20)
        pub.close()
        got = drain(sub, quiet=3.0)
        sub.close()
        assert {(m["stream"], m["ts"]) for m in got} == {(s, ts) for ts, s, _ in rows}
        assert d.sample("streamrnn_messages_received_total") == sum(1 for _, _, v in rows for x in v if x == x)  # nothing from the intruder
        assert d.sample("streamrnn_mqtt_connected") == 1

        for w, sign in zip(wrong, ("broker refused the connection", "CERTIFICATE_VERIFY_FAILED")):
            deadline = time.monotonic() + 30
            while w.log().count(sign) < 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert w.log().count(sign) >= 3, f"{w.instance}: no clear, repeated error:\n{w.log()[-2000:]}"  # and it keeps trying
            assert w.proc.poll() is None
        assert "not authorized" in wrong[0].log().lower() and "check mqtt.username" in wrong[0].log()
    finally:
        for p in (d, *wrong):
            p.kill()
    logs = "".join(p.log() for p in (d, *wrong))
    for pw in (*PASSWORDS.values(), "Wr0ng-Pa55-Zq"):
        assert pw not in logs


def test_streamrnn_config_never_prints_the_password(tmp_path):
    env = {"STREAMRNN_MQTT__PASSWORD": "Env-Secret-5fj", "STREAMRNN_MQTT__USERNAME": "streamrnn", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "streamrnn", "config"], env=env, capture_output=True, text=True, check=True)
    assert "Env-Secret-5fj" not in out.stdout + out.stderr and '"password": "**********"' in out.stdout
    (tmp_path / "pw").write_text("File-Secret-8hd\n")
    env |= {"STREAMRNN_MQTT__PASSWORD_FILE": str(tmp_path / "pw")}
    del env["STREAMRNN_MQTT__PASSWORD"]
    out = subprocess.run([sys.executable, "-m", "streamrnn", "config"], env=env, capture_output=True, text=True, check=True)
    assert "File-Secret-8hd" not in out.stdout + out.stderr and str(tmp_path / "pw") in out.stdout


def test_tls_settings_without_mqtts_or_a_key_without_its_certificate_fail_at_start(tmp_path):
    crt = tmp_path / "c.crt"
    crt.write_text("x")
    with pytest.raises(config.ConfigError, match="tls_ca set, but url 'mqtt://127.0.0.1:1883' is not mqtts://"):
        config.load(None, mqtt={"tls_ca": str(crt)})
    with pytest.raises(config.ConfigError, match="tls_cert and tls_key go together"):
        config.load(None, mqtt={"url": "mqtts://h:8883", "tls_cert": str(crt)})
    with pytest.raises(config.ConfigError, match="mqtt.password_file"):
        config.load(None, mqtt={"password_file": str(tmp_path / "missing")})


def test_the_shipped_broker_settings_keep_the_daemons_client_id_and_status_topic_to_it(secured, tmp_path):
    broker, certs = secured
    ca = certs["ca"]
    (tmp_path / "pw").write_text(PASSWORDS["streamrnn"] + "\n")
    mqtt = {
        "url": broker.url,
        "username": "streamrnn",
        "password_file": str(tmp_path / "pw"),
        "tls_ca": str(ca),
        "reconnect_min": 0.2,
        "reconnect_max": 1.0,
    }
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, mqtt=mqtt)
    reader = client(broker.url, "reader", ca)
    d = DaemonProcess(tmp_path, broker.url, config=cfg, instance="held", client=reader).start()
    try:
        # the gateway's credentials, the daemon's client id: the broker gives it the id "gateway"
        thief = Publisher(broker.url, "streamrnn-held", cfg=client(broker.url, "gateway", ca))
        thief.publish("streamrnn/held/status", b"offline", retain=True)  # not the gateway's to write: dropped
        time.sleep(3.0)
        thief.close()
        status = Subscriber(broker.url, "t-status", ["streamrnn/held/status"], cfg=reader)
        try:
            assert status.messages.get(timeout=5).payload == b"online"
        finally:
            status.close()
        assert d.sample("streamrnn_mqtt_reconnects_total") == 0 and d.sample("streamrnn_mqtt_connected") == 1
        assert d.sample("streamrnn_status_reasserted_total") == 0  # nothing else ever reached its status topic
    finally:
        d.kill()
    assert "disconnected" not in d.log() and PASSWORDS["streamrnn"] not in d.log()
