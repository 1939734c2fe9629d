"""Consuming side of amqp-bus."""

__all__: list[str] = []
