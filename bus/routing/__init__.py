"""In-memory routing simulator: which queues does (exchange, routing key, headers) reach?

Pure and without I/O. The semantics are RabbitMQ 3.10.8's and 4.0.5's, checked against both
brokers by ``tests/integration/test_routing_differential.py``; ``Router(..., rabbitmq="4.0")``
picks the version (default 3.10.8, see :mod:`bus.versions` and docs/rabbitmq-versions.md):

- default exchange ``""``: the queue named by the key; direct: byte-exact key; fanout: all.
- topic: words split on ``.`` (``""`` is zero words, ``a..b`` has an empty middle word), ``*``
  exactly one word, ``#`` zero or more, case-sensitive.
- headers: ``x-match`` all (default) / any / all-with-x / any-with-x. all/any ignore binding
  arguments starting with ``x-``; the with-x kinds only skip ``x-match`` itself. A binding
  argument with no value (``None``, AMQP void) matches on presence. Values compare as the
  broker compares Erlang terms (:func:`header_term`): ``5`` != ``"5"``, ``1`` != ``True``,
  int widths are equal at the top level, ``str`` == ``bytes`` with the same UTF-8, a
  ``datetime`` equals its epoch seconds; inside arrays and tables the AMQP type tag counts
  too (typed as pika encodes it) and table order matters. From RabbitMQ 4.0 a message's
  top-level ``timestamp`` header is compared in *milliseconds* (:func:`message_header_term`),
  while a binding's timestamp stays in seconds: header ``n = timestamp 5`` matches a binding
  ``{n: 5000}``, not ``{n: 5}``, and not even ``{n: timestamp 5}`` (measured on 4.0.5).
- ``CC``/``BCC`` headers (arrays of strings) add routing keys; ``BCC`` is removed before the
  headers exchange sees the message. A ``CC``/``BCC`` header of another type is refused.
- exchange-to-exchange bindings route with the source's rules; every exchange is visited
  once (cycles end), every queue is reached once.
- an exchange whose own bindings match nothing (queue or exchange destinations alike)
  forwards to its alternate exchange; an e2e binding that leads nowhere still counts as a
  match, so the alternate exchange is *not* used then (observed on 3.10.8).
- publishing straight to an internal exchange is refused; reaching one through a binding,
  an alternate exchange or a dead-letter exchange is fine.
- dead-lettering (``on="reject"|"expire"``): each reached queue with
  ``x-dead-letter-exchange`` republishes there with ``x-dead-letter-routing-key`` or the
  original keys (CC included); ``expire`` never lands back in the queue it expired from
  (the broker's cycle detection drops it), ``reject`` may. One hop from a fresh message.
  From 4.0 the copy also carries ``x-last-death-reason/queue/exchange``, and the broker's
  ``x-death`` is not seen by the exchanges that route the copy (it is on the delivered copy).

One module per job: :mod:`.topic` (topic matching), :mod:`.header_terms` (header values as
Erlang terms), :mod:`.headers_match` (headers-exchange matching), :mod:`.routing_keys` (CC/BCC),
:mod:`.destinations` (binding ends), :mod:`.exchange` (a compiled exchange),
:mod:`.exchange_graph` (exchange-to-exchange routing), :mod:`.route` (route results),
:mod:`.router` (the router and dead-lettering), :mod:`.header_option` (``NAME:TYPE=VALUE``).
"""

from bus.routing.header_option import HEADER_TYPES, parse_header_option
from bus.routing.header_terms import header_term, message_header_term
from bus.routing.headers_match import (
    headers_binding_matches_everything,
    headers_binding_matches_something,
)
from bus.routing.route import DeadLetterReason, Hop, Route
from bus.routing.router import Router
from bus.routing.topic import topic_matches

__all__ = [
    "HEADER_TYPES",
    "DeadLetterReason",
    "Hop",
    "Route",
    "Router",
    "header_term",
    "headers_binding_matches_everything",
    "headers_binding_matches_something",
    "message_header_term",
    "parse_header_option",
    "topic_matches",
]
