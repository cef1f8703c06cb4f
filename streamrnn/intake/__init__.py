"""Deliveries to frames: each payload parsed into readings, and readings assembled into frames on the
period grid; what is refused is counted in plain counts of its own. It may import the top level
(atomic, config, delivery, environment, logs), engine, learning; nothing downstream of it."""
