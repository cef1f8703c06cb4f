import json
import re

import jsonschema
import numpy as np

from streamrnn.engine import forecast
from streamrnn.engine.forecast import Forecast, Forecasts


def make(h=3, nan_band=False):
    vals = np.array([[1.23456789, 101325.123456], [1.3, 101400.0], [1.4, 101500.0]])[:h]
    band = np.full_like(vals, np.nan) if nan_band else np.full_like(vals, 0.05)
    return Forecast("reactor-01", 1767225610.0, "gru", 2, ("conc", "pressure"), vals, vals - band, vals + band, np.array([1.2, np.nan]))


def test_message_validates_and_reads_as_documented():
    doc = json.loads(forecast.encode(make(), 10.0, {"conc": 0.12, "pressure": None}))
    jsonschema.validate(doc, forecast.schema())
    assert doc["stream"] == "reactor-01" and doc["ts"] == 1767225610.0 and doc["period"] == 10.0 and doc["horizon"] == 3
    assert doc["model"] == {"kind": "gru", "version": 2}
    conc = doc["targets"]["conc"]
    assert conc["values"][0] == 1.2345679  # the float32 value, shortest
    assert doc["targets"]["pressure"]["values"][0] == 101325.125  # float32 steps 1/128 here
    assert conc["skill"] == 0.12 and doc["targets"]["pressure"]["now"] is None
    assert all(len(t[k]) == 3 for t in doc["targets"].values() for k in ("values", "lower", "upper"))


def test_missing_bands_are_null_and_still_valid():
    doc = json.loads(forecast.encode(make(nan_band=True), 10.0))
    jsonschema.validate(doc, forecast.schema())
    assert doc["targets"]["conc"]["lower"] == [None, None, None]


def test_schema_refuses_what_the_daemon_never_sends():
    good = forecast.document(make(), 10.0)
    for broken in ({**good, "extra": 1}, {k: v for k, v in good.items() if k != "model"}, {**good, "horizon": 0}):
        try:
            jsonschema.validate(broken, forecast.schema())
        except jsonschema.ValidationError:
            continue
        raise AssertionError(f"schema accepted {broken}")


def test_numbers_are_float32_in_their_shortest_decimal_at_every_scale():
    rng = np.random.default_rng(5)
    vals = rng.normal(size=(2, 50, 1)) * 10.0 ** rng.integers(-40, 38, size=(2, 50, 1))
    vals[0, :3, 0] = [0.0, np.inf, -np.inf]
    batch = Forecasts(["a", "b"], [0.0, 1.0], "gru", 0, ("x",), vals, vals, vals, vals[:, 0, :])
    for i, raw in enumerate(forecast.encode_all(batch, 10.0)):
        text = re.search(rb'"values":\[([^]]*)\]', raw).group(1).decode().split(",")
        for token, x in zip(text, vals[i, :, 0]):
            if not np.isfinite(x):
                assert token == "null"
                continue
            assert np.float32(float(token)) == np.float32(x)  # reads back as the same float32
            shortest = np.format_float_scientific(np.float32(x), unique=True)
            assert len(significant(token)) == len(significant(shortest)) <= 9


def significant(number: str) -> str:
    """The significant digits of a decimal number as written."""
    return re.sub(r"e.*|[-+.]", "", number).strip("0") or "0"


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
    encoded = forecast.encode_all(batch, 10.0, skill)
    assert len(encoded) == b
    for i, (fc, raw) in enumerate(zip(batch, encoded)):
        assert raw == forecast.encode(fc, 10.0, skill)
        doc = json.loads(raw)
        jsonschema.validate(doc, forecast.schema())
        assert doc["stream"] == f"s{i}" and doc["model"] == {"kind": "lstm", "version": 7}
        for j, name in enumerate(("conc", "pressure")):
            got = np.array(doc["targets"][name]["values"])
            np.testing.assert_array_equal(got.astype(np.float32), vals[i, :, j].astype(np.float32))
            assert (doc["targets"][name]["lower"] == [None] * h) == (i == 1)
        assert (doc["targets"]["pressure"]["now"] is None) == (i == 2)
