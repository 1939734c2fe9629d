"""Table of bad topology files: each must exit 2 and point at the exact line, column and field.

The expected position is where ``@@`` sits in the input (the marker is removed before
validation), so the test states where the error *is*, independently of the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.cli import main

V = "version: 1\n"
X = V + "exchanges:\n  events: {type: topic}\n"
LONG = "q" * 256
# A Celery queue `c` and a plain queue `plain`, for the celery.schedules rows.
CQ = (
    X
    + "queues:\n  c:\n    celery: true\n    bindings: [{exchange: events, routing_key: c}]\n"
    + "  plain:\n    bindings: [{exchange: events, routing_key: p}]\n"
)

CASES: list[tuple[str, str, str, str]] = [
    # id, yaml (with @@ at the error), expected field path, expected message fragment
    ("syntax-tab", V + "queues:\n@@\tq: {}\n", "", "YAML syntax"),
    ("syntax-unclosed-flow", V + "queues: {a: 1\n@@", "", "YAML syntax"),
    ("duplicate-top-key", V + "exchanges: {}\n@@exchanges: {}\n", "exchanges", "duplicate key"),
    ("duplicate-queue", V + "queues:\n  q: {}\n  @@q: {}\n", "queues.q", "duplicate key"),
    ("unknown-top-key", V + "@@queus: {}\n", "queus", "did you mean 'queues'"),
    (
        "unknown-queue-key",
        V + "queues:\n  q:\n    @@delivery_limt: 5\n",
        "queues.q.delivery_limt",
        "unknown key",
    ),
    (
        "unknown-exchange-key",
        V + "exchanges:\n  e: {type: direct, @@durabel: true}\n",
        "exchanges.e.durabel",
        "unknown key",
    ),
    (
        "unknown-binding-key",
        X + "queues:\n  q:\n    bindings:\n      - {exchange: events, @@key: a}\n",
        "queues.q.bindings[0].key",
        "unknown key",
    ),
    ("bad-exchange-type", V + "exchanges:\n  e: {type: @@topik}\n", "exchanges.e.type", "'topic'"),
    (
        "missing-exchange-type",
        V + "exchanges:\n  e: @@{durable: true}\n",
        "exchanges.e",
        "'type' is missing",
    ),
    (
        "quoted-ttl",
        V + 'queues:\n  q: {message_ttl: @@"1000"}\n',
        "queues.q.message_ttl",
        "quoted number",
    ),
    (
        "quoted-max-length",
        V + "queues:\n  q: {max_length: @@'10'}\n",
        "queues.q.max_length",
        "quoted number",
    ),
    (
        "bool-max-length",
        V + "queues:\n  q: {max_length: @@true}\n",
        "queues.q.max_length",
        "integer",
    ),
    (
        "negative-delivery-limit",
        V + "queues:\n  q: {type: quorum, delivery_limit: @@-1}\n",
        "queues.q.delivery_limit",
        "greater than or equal to 0",
    ),
    ("zero-expires", V + "queues:\n  q: {expires: @@0}\n", "queues.q.expires", "greater than 0"),
    (
        "priority-too-high",
        V + "queues:\n  q: {max_priority: @@300}\n",
        "queues.q.max_priority",
        "less than or equal to 255",
    ),
    (
        "bad-duration",
        V + "queues:\n  q: {message_ttl: @@10 sec}\n",
        "queues.q.message_ttl",
        "invalid duration",
    ),
    (
        "bad-retry-delay",
        X + "queues:\n  q:\n    dead_letter: true\n    retry: {delays: [1s, @@1x]}\n",
        "queues.q.retry.delays[1]",
        "invalid duration",
    ),
    (
        "zero-retry-delay",
        X + "queues:\n  q:\n    dead_letter: true\n    retry: {delays: [@@0s]}\n",
        "queues.q.retry.delays[0]",
        "greater than 0",
    ),
    (
        "empty-exchange-name",
        V + 'exchanges:\n  @@"": {type: direct}\n',
        'exchanges[""]',
        "must not be empty",
    ),
    (
        "long-queue-name",
        V + f"queues:\n  @@{LONG}: {{}}\n",
        f"queues.{LONG}",
        "longer than 255 bytes",
    ),
    (
        "reserved-exchange",
        V + "exchanges:\n  @@amq.custom: {type: direct}\n",
        'exchanges["amq.custom"]',
        "reserved prefix",
    ),
    ("reserved-queue", V + "queues:\n  @@amq.q: {}\n", 'queues["amq.q"]', "reserved prefix"),
    (
        "dangling-binding",
        V + "queues:\n  q:\n    bindings: [{exchange: @@nope}]\n",
        "queues.q.bindings[0].exchange",
        "'nope' is not declared",
    ),
    (
        "dangling-dlx",
        V + "queues:\n  q: {dead_letter_exchange: @@dlx}\n",
        "queues.q.dead_letter_exchange",
        "'dlx' is not declared",
    ),
    (
        "dangling-alternate",
        V + "exchanges:\n  e: {type: topic, alternate_exchange: @@ae}\n",
        "exchanges.e.alternate_exchange",
        "'ae' is not declared",
    ),
    (
        "dangling-event-exchange",
        V + "events:\n  e: {exchange: @@nope, model: 'a.b:C'}\n",
        "events.e.exchange",
        "'nope' is not declared",
    ),
    (
        "dangling-e2e-source",
        X + "exchange_bindings:\n  - {source: @@nope, destination: events}\n",
        "exchange_bindings[0].source",
        "'nope' is not declared",
    ),
    (
        "dangling-e2e-destination",
        X + "exchange_bindings:\n  - {source: events, destination: @@nope}\n",
        "exchange_bindings[0].destination",
        "'nope' is not declared",
    ),
    (
        "priority-on-quorum",
        V + "queues:\n  q: {type: quorum, max_priority: @@5}\n",
        "queues.q.max_priority",
        "does not apply to quorum",
    ),
    (
        "delivery-limit-on-classic",
        V + "queues:\n  q: {delivery_limit: @@5}\n",
        "queues.q.delivery_limit",
        "does not apply to classic",
    ),
    (
        "ttl-on-stream",
        V + "queues:\n  q: {type: stream, message_ttl: @@10s}\n",
        "queues.q.message_ttl",
        "does not apply to stream",
    ),
    (
        "cluster-size-zero",
        V + "queues:\n  q: {type: quorum, initial_cluster_size: @@0}\n",
        "queues.q.initial_cluster_size",
        "greater than 0",
    ),
    (
        "cluster-size-quoted",
        V + 'queues:\n  q: {type: stream, initial_cluster_size: @@"3"}\n',
        "queues.q.initial_cluster_size",
        "write 3 without quotes",
    ),
    (
        "cluster-size-on-classic",
        V + "queues:\n  q: {initial_cluster_size: @@3}\n",
        "queues.q.initial_cluster_size",
        "does not apply to classic",
    ),
    (
        "leader-locator-unknown",
        V + "queues:\n  q: {type: quorum, leader_locator: @@nearest}\n",
        "queues.q.leader_locator",
        "'client-local'",
    ),
    (
        "leader-locator-on-classic",
        V + "queues:\n  q: {leader_locator: @@balanced}\n",
        "queues.q.leader_locator",
        "does not apply to classic",
    ),
    (
        "exclusive",
        V + "queues:\n  q: {exclusive: @@true}\n",
        "queues.q.exclusive",
        "exclusive queues",
    ),
    (
        "non-durable-quorum",
        V + "queues:\n  q: {type: quorum, durable: @@false}\n",
        "queues.q.durable",
        "must be durable",
    ),
    (
        "auto-delete-stream",
        V + "queues:\n  q: {type: stream, auto_delete: @@true}\n",
        "queues.q.auto_delete",
        "cannot be auto_delete",
    ),
    (
        "bind-default-exchange",
        V + 'queues:\n  q:\n    bindings: [{exchange: @@""}]\n',
        "queues.q.bindings[0].exchange",
        "default exchange",
    ),
    (
        "duplicate-binding",
        X
        + "queues:\n  q:\n    bindings:\n      - {exchange: events, routing_key: a}\n      - @@{exchange: events, routing_key: a}\n",
        "queues.q.bindings[1]",
        "duplicate binding",
    ),
    (
        "duplicate-e2e",
        X
        + "  audit: {type: topic}\nexchange_bindings:\n  - {source: events, destination: audit}\n  - @@{source: events, destination: audit}\n",
        "exchange_bindings[1]",
        "duplicate binding",
    ),
    ("python-tag", V + "queues:\n  q: @@!!python/object:os.system {}\n", "queues.q", "tag"),
    ("custom-tag", V + "queues:\n  q: {message_ttl: @@!env TTL}\n", "queues.q.message_ttl", "tag"),
    (
        "float-argument",
        V + "queues:\n  q: {arguments: {x-custom: @@1.5}}\n",
        "queues.q.arguments.x-custom",
        "floats are not allowed",
    ),
    (
        "dl-key-without-dlx",
        V + "queues:\n  q: {dead_letter_routing_key: @@k}\n",
        "queues.q.dead_letter_routing_key",
        "needs dead_letter_exchange",
    ),
    (
        "retry-without-dlq",
        V + "queues:\n  q: {retry: @@{delays: [1s]}}\n",
        "queues.q.retry",
        "needs a place",
    ),
    ("password-key", V + "vhost: {name: v}\n@@password: hunter2\n", "password", "credential"),
    (
        "url-with-password",
        V + 'exchanges:\n  e: {type: direct, description: @@"amqp://u:secret@host/"}\n',
        "exchanges.e.description",
        "user:password",
    ),
    ("missing-version", "@@exchanges: {}\n", "", "'version' is missing"),
    ("wrong-version", "version: @@2\n", "version", "expected 1"),
    (
        "bad-x-match",
        V
        + "exchanges:\n  h: {type: headers}\nqueues:\n  q:\n    bindings: [{exchange: h, arguments: {x-match: @@most}}]\n",
        "queues.q.bindings[0].arguments.x-match",
        "x-match must be",
    ),
    (
        "model-path",
        X + "events:\n  e: {exchange: events, model: @@nomodule}\n",
        "events.e.model",
        "package.module:ClassName",
    ),
    ("top-level-list", "@@- a\n- b\n", "", "must be a mapping"),
    (
        "typed-arg-in-arguments",
        V + "queues:\n  q: {arguments: {@@x-message-ttl: 5}}\n",
        "queues.q.arguments.x-message-ttl",
        "typed field",
    ),
    (
        "celery-pattern-only",
        X
        + "queues:\n  q:\n    celery: @@true\n    bindings: [{exchange: events, routing_key: 'a.*'}]\n",
        "queues.q.celery",
        "celery.routing_key",
    ),
    (
        "schedule-queue-not-celery",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: @@plain, every: 1s}\n",
        "celery.schedules.s.queue",
        "not marked 'celery:'",
    ),
    (
        "schedule-queue-undeclared",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: @@nope, every: 1s}\n",
        "celery.schedules.s.queue",
        "not declared",
    ),
    (
        "schedule-cron-out-of-range",
        CQ
        + "celery:\n  schedules:\n    s:\n      task: t.a\n      queue: c\n      cron: @@'0 24 * * *'\n",
        "celery.schedules.s.cron",
        "hour 24 is out of range 0-23",
    ),
    (
        "schedule-cron-four-fields",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: c, cron: @@'*/5 * * *'}\n",
        "celery.schedules.s.cron",
        "has 4 fields; expected 5",
    ),
    (
        "schedule-cron-day-name-in-month",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: c, cron: @@'0 0 1 mon *'}\n",
        "celery.schedules.s.cron",
        "month 'mon'",
    ),
    (
        "schedule-cron-zero-step",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: c, cron: @@'*/0 * * * *'}\n",
        "celery.schedules.s.cron",
        "step must be a positive integer",
    ),
    (
        "schedule-every-and-cron",
        CQ
        + "celery:\n  schedules:\n    s:\n      task: t.a\n      queue: c\n      every: 1m\n      @@cron: '* * * * *'\n",
        "celery.schedules.s.cron",
        "exactly one of every / cron",
    ),
    (
        "schedule-neither-every-nor-cron",
        CQ + "celery:\n  schedules:\n    @@s: {task: t.a, queue: c}\n",
        "celery.schedules.s",
        "exactly one of every",
    ),
    (
        "schedule-zero-every",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: c, every: @@0s}\n",
        "celery.schedules.s.every",
        "greater than 0",
    ),
    (
        "schedule-unknown-key",
        CQ + "celery:\n  schedules:\n    s: {task: t.a, queue: c, every: 1s, @@countdown: 5}\n",
        "celery.schedules.s.countdown",
        "unknown key",
    ),
    (
        "celery-prefetch-zero",
        V + "celery: {prefetch_multiplier: @@0}\n",
        "celery.prefetch_multiplier",
        "greater than or equal to 1",
    ),
    (
        "celery-unknown-key",
        CQ + "celery:\n  @@monitorin: true\n",
        "celery.monitorin",
        "did you mean 'monitoring'",
    ),
    (
        "monitoring-exchange-declared",
        V + "exchanges:\n  @@celeryev: {type: topic}\ncelery: {monitoring: true}\n",
        "exchanges.celeryev",
        "declared by celery.monitoring",
    ),
    # Broker and wire limits (tests/integration/test_broker_limits.py measures them).
    (
        "ttl-over-3650d",
        X + "queues:\n  q:\n    message_ttl: @@36500d\n",
        "queues.q.message_ttl",
        "exceeds RabbitMQ's maximum of 315360000000 ms",
    ),
    (
        "expires-over-3650d",
        X + "queues:\n  q: {expires: @@315360000001}\n",
        "queues.q.expires",
        "value_too_large",
    ),
    (
        "retry-delay-over-3650d",
        X + "queues:\n  q:\n    dead_letter: true\n    retry: {delays: [1s, @@3651d]}\n",
        "queues.q.retry.delays[1]",
        "retry delay of 3651d",
    ),
    (
        "dead-letter-ttl-over-3650d",
        X + "queues:\n  q:\n    dead_letter: {message_ttl: @@4000d}\n",
        "queues.q.dead_letter.message_ttl",
        "exceeds",
    ),
    (
        "binding-key-over-255-bytes",
        X + f"queues:\n  q:\n    bindings: [{{exchange: events, routing_key: @@{LONG}}}]\n",
        "queues.q.bindings[0].routing_key",
        "routing key is 256 bytes",
    ),
    (
        "binding-header-name-over-255-bytes",
        V
        + "exchanges:\n  h: {type: headers}\n"
        + f"queues:\n  q:\n    bindings:\n      - exchange: h\n        arguments: {{@@{LONG}: 1}}\n",
        f"queues.q.bindings[0].arguments.{LONG}",
        "header name is 256 bytes",
    ),
    (
        "event-header-name-over-255-bytes",
        X + f"events:\n  e:\n    exchange: events\n    model: m:M\n    headers: {{@@{LONG}: x}}\n",
        f"events.e.headers.{LONG}",
        "header name is 256 bytes",
    ),
    (
        "argument-integer-over-64-bits",
        X + "queues:\n  q:\n    arguments: {x-custom: @@9223372036854775808}\n",
        "queues.q.arguments.x-custom",
        "does not fit the 64 bits",
    ),
    (
        "max-length-over-64-bits",
        X + "queues:\n  q: {max_length: @@9223372036854775808}\n",
        "queues.q.max_length",
        "does not fit the 64 bits",
    ),
    (
        "generated-name-over-255-bytes",
        X + f"queues:\n  {'q' * 252}:\n    dead_letter: @@true\n",
        f"queues.{'q' * 252}.dead_letter",
        "generated name",
    ),
]


def _position(text: str) -> tuple[str, int, int]:
    index = text.index("@@")
    clean = text[:index] + text[index + 2 :]
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return clean, line, column


@pytest.mark.parametrize(
    ("text", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_topology_is_reported_at_its_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, path: str, fragment: str
) -> None:
    clean, line, column = _position(text)
    file = tmp_path / "topology.yaml"
    file.write_text(clean, encoding="utf-8")

    code = main(["validate", "-f", str(file)])

    err = capsys.readouterr().err
    assert code == 2, err
    where = f"{file}:{line}:{column}: "
    expected_prefix = where + (f"{path}: " if path else "")
    matching = [entry for entry in err.splitlines() if entry.startswith(expected_prefix)]
    assert matching, f"no error at {expected_prefix!r} in:\n{err}"
    assert any(fragment in entry for entry in matching), err
    assert "Traceback" not in err


def test_table_covers_at_least_thirty_distinct_inputs() -> None:
    assert len({c[1] for c in CASES}) >= 30


def test_every_error_of_a_file_is_reported_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(
        V + "queues:\n  a: {max_length: '5'}\n  b: {type: quorum, max_priority: 3}\n"
        "  c: {bindings: [{exchange: nope}]}\n",
        encoding="utf-8",
    )
    assert main(["validate", "-f", str(file)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [e.split(": ")[1] for e in err] == [
        "queues.a.max_length",
        "queues.b.max_priority",
        "queues.c.bindings[0].exchange",
    ]
