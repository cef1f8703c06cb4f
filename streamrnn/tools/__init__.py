"""Tools around the product, which the daemon and the engine never import: the demo, the
benchmarks and their load, the brokers and daemons they start as child processes on loopback (the
tests start theirs here too). It may import every part but the command line; no part imports it."""
