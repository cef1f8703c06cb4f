"""Many boxes on NATS JetStream: shards that own partitions by lease, each partition's engine, the
fleet's champion and its store. It may import the top level (atomic, config, delivery, environment,
logs), engine, learning, intake, transport, daemon; nothing downstream of it."""
