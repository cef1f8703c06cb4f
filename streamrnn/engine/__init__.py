"""Frames in, forecasts out, with no I/O of its own: the recurrent model and its hidden-state bank,
the rings, the linear contender, the gate, the evaluator and its bands, channel health and the
trust. It may import the top level (atomic, config, delivery, environment, logs); nothing
downstream of it."""
