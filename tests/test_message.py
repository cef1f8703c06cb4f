import json

import jsonschema
import numpy as np
import orjson

from streamrnn import message
from streamrnn.engine import Forecast, Forecasts


def forecast(h=3, nan_band=False):
    vals = np.array([[1.23456789, 101325.123456], [1.3, 101400.0], [1.4, 101500.0]])[:h]
    band = np.full_like(vals, np.nan) if nan_band else np.full_like(vals, 0.05)
    return Forecast("reactor-01", 1767225610.0, "gru", 2, ("conc", "pressure"), vals, vals - band, vals + band, np.array([1.2, np.nan]))


def test_message_validates_and_reads_as_documented():
    doc = json.loads(message.encode(forecast(), 10.0, {"conc": 0.12, "pressure": None}))
    jsonschema.validate(doc, message.schema())
    assert doc["stream"] == "reactor-01" and doc["ts"] == 1767225610.0 and doc["period"] == 10.0 and doc["horizon"] == 3
    assert doc["model"] == {"kind": "gru", "version": 2}
    conc = doc["targets"]["conc"]
    assert conc["values"][0] == 1.234568  # 7 significant digits
    assert doc["targets"]["pressure"]["values"][0] == 101325.1
    assert conc["skill"] == 0.12 and doc["targets"]["pressure"]["now"] is None
    assert all(len(t[k]) == 3 for t in doc["targets"].values() for k in ("values", "lower", "upper"))


def test_missing_bands_are_null_and_still_valid():
    doc = json.loads(message.encode(forecast(nan_band=True), 10.0))
    jsonschema.validate(doc, message.schema())
    assert doc["targets"]["conc"]["lower"] == [None, None, None]


def test_schema_refuses_what_the_daemon_never_sends():
    good = message.document(forecast(), 10.0)
    for broken in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "model"}, {**good, "horizon": 0}):
        try:
            jsonschema.validate(broken, message.schema())
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"schema accepted {broken}")


def test_rounding_keeps_seven_significant_digits_at_every_scale():
    a = np.array([1.23456789e-9, 0.0, -3.14159265358979, 123456789.0, np.inf, np.nan])
    assert json.loads(orjson.dumps(message.rounded(a).tolist())) == [1.234568e-9, 0.0, -3.141593, 123456800.0, None, None]


def test_a_batch_encodes_as_each_forecast_alone_would():
    rng = np.random.default_rng(3)
    b, h, t = 4, 3, 2
    vals = rng.normal(size=(b, h, t)) * 10.0 ** rng.integers(-5, 6, size=(b, h, t))
    lower, upper = vals - 0.1, vals + 0.1
    lower[1], upper[1] = np.nan, np.nan  # a stream with no band yet
    now = rng.normal(size=(b, t))
    now[2, 1] = np.nan
    batch = Forecasts([f"s{i}" for i in range(b)], [10.0 * i for i in range(b)], "lstm", 7, ("conc", "pressure"), vals, lower, upper, now)
    skill = {"conc": 0.5, "pressure": None}
    encoded = message.encode_all(batch, 10.0, skill)
    assert len(encoded) == b
    for i, (fc, raw) in enumerate(zip(batch, encoded)):
        assert raw == message.encode(fc, 10.0, skill)
        doc = json.loads(raw)
        jsonschema.validate(doc, message.schema())
        assert doc["stream"] == f"s{i}" and doc["model"] == {"kind": "lstm", "version": 7}
        for j, name in enumerate(("conc", "pressure")):
            got = np.array(doc["targets"][name]["values"])
            np.testing.assert_allclose(got, vals[i, :, j], rtol=1e-6)
            assert (doc["targets"][name]["lower"] == [None] * h) == (i == 1)
        assert (doc["targets"]["pressure"]["now"] is None) == (i == 2)
