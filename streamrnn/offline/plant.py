"""The built-in reactor's sensors, as the simulator publishes them and the default configuration
serves them: names, the key quality variable, the period (``reactor.toml``, with their units)."""

from streamrnn.config import REACTOR

PERIOD = float(REACTOR["period"])  # seconds of process time between two frames
KEY = str(REACTOR["key"])
AUXILIARIES = tuple(REACTOR["auxiliaries"])
FEATURES = (*AUXILIARIES, KEY)
