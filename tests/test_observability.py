"""The shipped dashboard and alert rules against a real Prometheus scraping a real daemon, and the
readiness probe against a broker that goes away."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import write_config

from streamrnn import children
from streamrnn.tools.processes import free_port, wait_port

pytestmark = pytest.mark.broker
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "streamrnn.json"
RULES = DEPLOY / "prometheus" / "streamrnn-alerts.yml"
# Grafana's variables as this test sets them: every instance and target of the job it scrapes
VARIABLES = {"$__rate_interval": "15s", "$job": "streamrnn", "$instance": ".+", "$target": ".+"}


def binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/bin:/usr/sbin")
    if found is None:
        pytest.fail(f"{name} is not installed: apt-get install prometheus (CI installs it)")
    return found


def expand(expr: str) -> str:
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded variable in {expr}"
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]
    assert len(out) >= 25
    return out


class Prometheus:
    def __init__(self, workdir: Path, target_port: int) -> None:
        self.port = free_port()
        workdir.mkdir()
        shutil.copy(RULES, workdir / RULES.name)
        conf = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [RULES.name],
            "scrape_configs": [{"job_name": "streamrnn", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(conf))
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, 30, self.proc)
        deadline = time.monotonic() + 30  # the API answers 503 until the storage is open
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=5).close()
                break
            except urllib.error.HTTPError:
                assert time.monotonic() < deadline, "prometheus not ready after 30 s"
                time.sleep(0.2)

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        children.stop(self.proc, 20)
        self.log.close()


def test_no_dashboard_query_averages_errors_of_targets_in_different_units():
    """Issue 40: 'MSE against persistence' averaged raw MSEs over targets, so the target of the
    largest unit decided it. An error is divided by persistence's, per target, before any average."""
    for title, expr in dashboard_queries():
        for metric in re.findall(r"streamrnn_(?:forecast|persistence)_(?:mse|mae)\b", expr):
            ratio = r"streamrnn_forecast_m[sa]e\{[^}]*\}\s*/\s*streamrnn_persistence_m[sa]e\{"
            assert re.search(ratio, expr), f"{title}: {metric} aggregated in its own units: {expr}"


def test_promtool_checks_the_shipped_config_and_rules():
    promtool = binary("promtool")
    for args in (
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "streamrnn-alerts.yml"],
        ["test", "rules", "streamrnn-alerts.test.yml"],
    ):
        r = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True)
        assert r.returncode == 0, f"promtool {' '.join(args)}:\n{r.stdout}\n{r.stderr}"


def test_every_dashboard_query_and_alert_rule_against_a_real_prometheus(mosquitto, daemons, tmp_path):
    cfg = write_config(
        tmp_path / "d.toml",
        # a retrain of fixed work, at the daemon's priority: on a machine busy with other work an idle-priority one may wait for minutes
        trainer={
            "min_frames": 200,
            "retrain_every": 100_000,
            "window": 16,
            "max_steps": 20,
            "max_seconds": 300.0,
            "rewarm": 64,
            "threads": 1,
            "priority": "normal",
        },
    )
    daemon = daemons(mosquitto.url, config=cfg, instance="obs")
    prom = Prometheus(tmp_path / "prometheus", daemon.metrics_port)
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamrnn",
            "simulate",
            "--broker",
            mosquitto.url,
            "--streams",
            "2",
            "--rate",
            "20",
            "--duration",
            "400",
            "--key-every",
            "5",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 360
        while time.monotonic() < deadline:  # until a retrain has finished and been scraped a few times
            done = prom.query('sum(streamrnn_retrains_total{job="streamrnn"})')
            if done and float(done[0]["value"][1]) >= 1 and prom.query("streamrnn_retrain_duration_seconds_count offset 5s"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"no retrain scraped in time:\n{daemon.log()[-3000:]}")

        empty = []
        for title, expr in dashboard_queries():
            result = prom.query(expand(expr))
            values = [float(r["value"][1]) for r in result]
            if not any(v == v for v in values):  # no sample, or only NaN
                empty.append(f"{title}: {expr} -> {result}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        dash = json.loads(DASHBOARD.read_text())
        for var in dash["templating"]["list"]:
            if var["type"] != "query":
                continue
            metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", var["query"]["query"]).groups()
            labels = {r["metric"].get(label) for r in prom.query(expand(metric))}
            assert labels - {None}, f"variable {var['name']}: no {label} values"
        for ann in dash["annotations"]["list"]:
            prom.query(expand(ann["expr"]))  # evaluates; a model swap may not have happened yet

        rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
        for rule in rules:
            prom.query(rule["expr"])  # raises unless it evaluates
        loaded = {r["name"]: r for g in prom.api("rules")["groups"] for r in g["rules"]}
        assert set(loaded) == {r["alert"] for r in rules}
        bad = {name: r.get("lastError") for name, r in loaded.items() if r["health"] != "ok"}
        assert not bad, bad
        firing = {a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]}
        assert not firing & {"StreamrnnDown", "StreamrnnBrokerDisconnected", "StreamrnnNoForecasts", "StreamrnnAbsent"}
    finally:
        children.stop(sim, 20)
        prom.stop()


def test_readyz_follows_the_broker_and_healthz_stays_up(mosquitto, daemons, tmp_path):
    cfg = write_config(tmp_path / "d.toml", trainer={"enabled": False}, mqtt={"reconnect_min": 0.2, "reconnect_max": 1.0})
    daemon = daemons(mosquitto.url, config=cfg, instance="ready")
    base = f"http://127.0.0.1:{daemon.metrics_port}"

    def status(path: str) -> int:
        try:
            return urllib.request.urlopen(base + path, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    def until(path: str, code: int, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            assert status("/healthz") == 200
            if status(path) == code:
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"{path} not {code} after {timeout} s")

    until("/readyz", 200, 10)
    for _ in range(2):
        mosquitto.stop()
        assert until("/readyz", 503, 5) < 3
        assert wait_sample(daemon, "streamrnn_mqtt_connected", 0.0, 5)
        mosquitto.start()
        assert until("/readyz", 200, 10) < 6
    assert status("/healthz") == 200 and status("/nothing") == 404


def wait_sample(daemon, name: str, value: float, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.sample(name) == value:
            return True
        time.sleep(0.2)
    return False


def test_bench_scrape_smoke():
    """A seconds-long run of ``streamrnn bench scrape``: it measures, and every scrape was answered."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "streamrnn",
            "bench",
            "scrape",
            "--streams",
            "2",
            "--clients",
            "10",
            "--seconds",
            "3",
            "--rounds",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(r.stdout)
    assert report["scrapers"]["scrapes"] > 0 and report["scrapers"]["errors"] == 0
    assert report["quiet"]["frames"] > 0 and report["loaded"]["frames"] > 0
    assert report["step_ratio"] > 0 and report["latency_ratio"] > 0
