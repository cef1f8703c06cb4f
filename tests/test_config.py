from __future__ import annotations

import json

import pytest

from streamrnn import cli, config


def test_defaults_serve_the_simulator():
    from streamrnn import simulator

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
    for name, field in config.Settings.model_fields.items():
        section = isinstance(field.annotation, type) and issubclass(field.annotation, config.BaseModel)
        assert (f"[{name}]" if section else f"\n{name} = ") in text, name
    assert s.mqtt.sensor_topic == "plant/{stream}/sensors/{feature}"


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
