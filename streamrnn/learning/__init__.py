"""Retraining off the serving path: the trainer, the judge of a challenger against the champion and
persistence, the linear contender's examples, and the retrainer's process. The engine hands a
snapshot out and takes a verdict in; it never imports this package. It may import the top level
(atomic, config, delivery, environment, logs), engine; nothing downstream of it."""
