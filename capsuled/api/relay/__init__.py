"""Delivering the outbox to the world: the AMQP notifier and webhooks, each a durable
reader (store/outbox_readers.py) driven by `worker.OutboxRelay`."""
