from __future__ import annotations

import json

import pytest

from streamrnn import cli, config


def test_defaults_serve_the_simulator():
    from streamrnn.offline import simulator

    s = config.load()
    assert s.features.inputs == list(simulator.AUXILIARIES)
    assert s.target_only == [simulator.KEY]
    assert s.channels == [*simulator.AUXILIARIES, simulator.KEY]


def test_toml_then_environment_overrides(tmp_path, monkeypatch):
    p = tmp_path / "s.toml"
    p.write_text('device = "cpu"\n[model]\nkind = "lstm"\nhidden_size = 32\n[features]\nhorizon = 7\n')
    s = config.load(p)
    assert (s.model.kind, s.model.hidden_size, s.features.horizon) == ("lstm", 32, 7)
    monkeypatch.setenv("STREAMRNN_MODEL__HIDDEN_SIZE", "48")
    monkeypatch.setenv("STREAMRNN_FEATURES__HORIZON", "3")
    s = config.load(p)
    assert (s.model.kind, s.model.hidden_size, s.features.horizon) == ("lstm", 48, 3)


@pytest.mark.parametrize(
    "toml,field",
    [
        ("[model]\nkind = 'transformer'\n", "model.kind"),
        ("[model]\nhidden_size = 0\n", "model.hidden_size"),
        ("[model]\nhiden_size = 8\n", "model.hiden_size"),
        ("[trainer]\nlr = -1\n", "trainer.lr"),
        ("[features]\ntargets = []\n", "features.targets"),
        ("[features]\ninputs = ['a/b']\n", "features.inputs"),
        ("device = 'tpu'\n", "device"),
    ],
)
def test_wrong_value_names_the_field(tmp_path, toml, field):
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert f"  {field}:" in str(e.value)


def test_wrong_environment_value_names_the_field(monkeypatch):
    monkeypatch.setenv("STREAMRNN_MODEL__NUM_LAYERS", "many")
    with pytest.raises(config.ConfigError, match=r"model\.num_layers"):
        config.load()


def test_bidirectional_message_says_why(tmp_path):
    p = tmp_path / "b.toml"
    p.write_text("[model]\nbidirectional = true\n")
    with pytest.raises(config.ConfigError, match="model.bidirectional: bidirectional networks are refused"):
        config.load(p)


def test_config_command_prints_effective_settings_with_secrets_masked(tmp_path, monkeypatch, capsys):
    p = tmp_path / "s.toml"
    p.write_text('[mqtt]\nusername = "plant"\npassword = "hunter2-secret"\n')
    monkeypatch.setenv("STREAMRNN_FEATURES__HORIZON", "5")
    assert cli.main(["config", "--config", str(p)]) == 0
    out = capsys.readouterr().out
    assert "hunter2-secret" not in out
    data = json.loads(out)
    assert data["mqtt"]["password"] == "**********" and data["mqtt"]["username"] == "plant"
    assert data["features"]["horizon"] == 5


def test_invalid_config_fails_the_command_with_exit_2(tmp_path, capsys):
    p = tmp_path / "bad.toml"
    p.write_text("[ring]\nsize = 1\n")
    assert cli.main(["config", "--config", str(p)]) == 2
    assert "ring.size" in capsys.readouterr().err


def test_the_example_file_loads_and_names_every_section():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "deploy" / "streamrnn.example.toml"
    s = config.load(path)
    text = path.read_text()
    import re

    for name, field in config.Settings.model_fields.items():
        section = isinstance(field.annotation, type) and issubclass(field.annotation, config.BaseModel)
        assert (f"[{name}]" if section else f"\n{name} = ") in text, name
        if section:  # and every key of it, set or commented out with its default
            body = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
            for key in field.annotation.model_fields:
                assert re.search(rf"^(# )?{key} = ", body, re.M), f"{name}.{key}"
    assert s.mqtt.sensor_topic == "plant/{stream}/sensors/{feature}"
    # every value set is its default, but where its line says otherwise (issue 40: 4 targets of 14)
    default = config.load(None)
    for name in config.Settings.model_fields:
        mine, theirs = getattr(s, name), getattr(default, name)
        if not isinstance(mine, config.BaseModel):
            assert mine == theirs, name
            continue
        body = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
        for key in type(mine).model_fields:
            if getattr(mine, key) != getattr(theirs, key):
                line = re.search(rf"^{key} = .*$", body, re.M).group(0)
                assert "default:" in line, f"{name}.{key} is not its default and its line does not say so: {line}"


@pytest.mark.parametrize(
    "mqtt, field",
    [
        ({"url": "http://broker:1883"}, "mqtt.url"),
        ({"url": "mqtt://broker:99999"}, "mqtt.url"),
        ({"sensor_topic": "plant/{stream}/sensors"}, "mqtt"),
        ({"sensor_topic": "plant/x{stream}/sensors/{feature}"}, "mqtt"),
        ({"forecast_topic": "plant/+/{stream}"}, "mqtt"),
        ({"instance": "a b"}, "mqtt.instance"),
        ({"qos": 3}, "mqtt.qos"),
    ],
)
def test_bad_mqtt_settings_fail_naming_the_field(mqtt, field):
    with pytest.raises(config.ConfigError) as e:
        config.load(None, mqtt=mqtt)
    assert f"  {field}" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "toml,field,got",
    [
        ("[streams]\nmax_streams = true\n", "streams.max_streams", "True"),
        ("[trainer]\nenabled = 'yes'\n", "trainer.enabled", "'yes'"),
        ("[daemon]\nmetrics_port = '9840'\n", "daemon.metrics_port", "'9840'"),
        ("[features]\nperiod = '10'\n", "features.period", "'10'"),
        ("[mqtt]\nkeepalive = 30.5\n", "mqtt.keepalive", "30.5"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_not_coerced(tmp_path, toml, field, got):
    p = tmp_path / "typed.toml"
    p.write_text(toml)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert f"  {field}: " in str(e.value) and f"(got {got})" in str(e.value)


def test_environment_values_are_read_as_their_fields_types_and_nothing_looser(monkeypatch):
    for key, value in {
        "MODEL__HIDDEN_SIZE": "48",
        "TRAINER__ENABLED": "false",
        "FEATURES__PERIOD": "2.5",
        "MQTT__QOS": "0",
        "TRAINER__INTERVAL": "30",
        "STREAMS__ALLOW": '["reactor-*"]',
        "CHECKPOINT__DIR": "/var/lib/x",
        "MQTT__USERNAME": "streamrnn",
        "MQTT__PASSWORD": "12345",
    }.items():
        monkeypatch.setenv(f"STREAMRNN_{key}", value)
    s = config.load()
    assert (s.model.hidden_size, s.trainer.enabled, s.features.period, s.mqtt.qos, s.trainer.interval) == (48, False, 2.5, 0, 30.0)
    assert s.streams.allow == ["reactor-*"] and str(s.checkpoint.dir) == "/var/lib/x" and s.mqtt.secret() == "12345"
    monkeypatch.setenv("STREAMRNN_TRAINER__ENABLED", "yes")
    with pytest.raises(config.ConfigError, match=r"trainer\.enabled: Input should be a valid boolean \(got 'yes'\)"):
        config.load()


@pytest.mark.parametrize(
    "name",
    [
        "STREAMRNN_MODELS__HIDDEN_SIZE",
        "STREAMRNN_MODEL__HIDEN_SIZE",
        "STREAMRNN_MODEL__HIDDEN_SIZE__X",
        "STREAMRNN_DEVICE__KIND",
        "streamrnn_nothing",
    ],
)
def test_an_environment_variable_that_names_no_setting_is_refused_by_name(monkeypatch, name):
    monkeypatch.setenv(name, "3")
    with pytest.raises(config.ConfigError) as e:
        config.load()
    assert f"  {name}: environment variable names no setting" in str(e.value)


SECRET = "Pa55-n0t-t0-be-5een"


@pytest.mark.parametrize(
    "mqtt",
    [
        {"password": SECRET, "reconnect_min": 5.0, "reconnect_max": 1.0},
        {"password": SECRET, "password_file": "/etc/hostname"},
        {"password": SECRET, "url": "ftp://host"},
        {"url": f"mqtt://streamrnn:{SECRET}@127.0.0.1:1883"},
        {"url": f"mqtts://streamrnn:{SECRET}@broker"},
    ],
)
def test_no_configuration_error_shows_a_secret(tmp_path, capsys, mqtt):
    p = tmp_path / "s.toml"
    p.write_text("[mqtt]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in mqtt.items()))
    assert cli.main(["config", "--config", str(p)]) == 2
    out = capsys.readouterr()
    assert "invalid configuration" in out.err and "mqtt" in out.err
    assert SECRET not in out.out + out.err


def test_credentials_in_the_broker_url_are_refused_where_they_would_be_shown_and_not_used(capsys):
    url = f"mqtt://streamrnn:{SECRET}@127.0.0.1:1883"
    with pytest.raises(config.ConfigError) as e:
        config.load(None, mqtt={"url": url})
    assert "mqtt.url: credentials do not go in the URL: give mqtt.username, and the password in mqtt.password_file" in str(e.value)
    assert SECRET not in str(e.value) and "mqtt://***@127.0.0.1:1883" in str(e.value)
    with pytest.raises(config.ConfigError) as e:  # the tools' path, which takes a URL as it is
        config.broker_address(url)
    assert SECRET not in str(e.value)
    assert cli.main(["simulate", "--broker", url, "--duration", "1"]) == 2  # the simulator's --broker
    assert cli.main(["run", "--broker", url]) == 2
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and out.err.count("credentials do not go in the URL") == 2


def test_a_password_without_a_username_is_refused_at_start_not_ignored(tmp_path):
    """Issue 40: MQTT sends a password only with a user name; a password file alone was silently unused."""
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(None, mqtt={"password_file": str(secret)})
    assert "mqtt: password_file set without username" in str(e.value) and SECRET not in str(e.value)
    assert config.load(None, mqtt={"password_file": str(secret), "username": "streamrnn"}).mqtt.secret() == SECRET


def test_a_broker_that_refuses_the_simulator_is_named_in_its_one_line(capsys):
    from streamrnn.tools.processes import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    assert cli.main(["simulate", "--broker", url, "--duration", "1"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"streamrnn simulate: no MQTT connection to {url}: Connection refused", err


def test_stream_allow_patterns_are_globs_and_must_be_patterns():
    allowed = config.load(None, streams={"allow": ["reactor-*", "unit-?"]}).streams.allowed()
    assert [bool(allowed.match(s)) for s in ("reactor-01", "unit-7", "unit-17", "xreactor-01")] == [True, True, False, False]
    assert config.load().streams.allowed() is None
    with pytest.raises(config.ConfigError, match="streams.allow"):
        config.load(None, streams={"allow": ["plant/*"]})
