"""One box: the service loop, the daemon that ties a transport, an intake and an engine together, the
retrain cycle, durability (checkpoints and the journal), metrics and their HTTP endpoint, systemd
notification and child processes. It may import the top level (atomic, config, delivery,
environment, logs), engine, learning, intake, transport; nothing downstream of it."""
