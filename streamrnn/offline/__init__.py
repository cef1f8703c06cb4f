"""Away from the plant: replay of CSV files, the literature's protocol, fault injection and its
report, the simulated reactor, plots. It may import the top level (atomic, config, delivery,
environment, logs), engine, learning, intake, transport, daemon, fleet; nothing downstream of it."""
