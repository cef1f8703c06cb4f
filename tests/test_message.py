import json

import jsonschema
import numpy as np

from streamrnn import message
from streamrnn.engine import Forecast


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
    a = np.array([1.23456789e-9, 0.0, -3.14159265358979, 123456789.0, np.inf])
    assert message.rounded(a) == [1.234568e-9, 0.0, -3.141593, 123456800.0, None]
