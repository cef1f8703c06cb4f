"""What carries messages in and forecasts out: the contract every transport keeps (base.py), the MQTT
link and clients (mqtt/), NATS JetStream (jetstream, natsconn, consumer), and the fair inbox
between a transport's threads and the engine. It may import the top level (atomic, config,
delivery, environment, logs), engine, learning, intake; nothing downstream of it."""
