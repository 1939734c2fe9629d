"""``bus publish``: one confirmed, mandatory publish from the command line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from bus.cli.support import FILE, broker_settings, timeout_option, topology_option, topology_path
from bus.contracts import Contract, ContractRegistry
from bus.errors import ContractError, UsageError
from bus.files import read_bounded
from bus.outgoing import DEFAULT_MAX_MESSAGE_SIZE
from bus.settings import BusSettings
from bus.topology import load_topology

__all__ = ["COMMANDS", "parse_headers", "publish_once"]


def parse_headers(pairs: Iterable[str]) -> dict[str, str]:
    """``-H name=value`` options as a header table (values stay strings, as given)."""
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"header {pair!r} must look like name=value")
        headers[name] = value
    return headers


def _body(json_text: str | None, body_file: Path | None) -> bytes:
    if (json_text is None) == (body_file is None):
        raise UsageError("give the body with exactly one of --json BODY or --file F")
    if json_text is not None:
        raw = json_text.encode("utf-8")
        source = "--json"
    else:
        assert body_file is not None
        raw = read_bounded(body_file, DEFAULT_MAX_MESSAGE_SIZE, "body file")
        source = str(body_file)
    try:
        json.loads(raw)
    except ValueError as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    return raw


def _inferred_contract(
    topology_file: Path | None, exchange: str, routing_key: str, headers: dict[str, Any]
) -> Contract | None:
    path = topology_path(topology_file)
    if topology_file is None and not Path(path).is_file():
        return None  # publishing by exchange and key needs no topology
    expanded = load_topology(path).expanded
    return ContractRegistry.of(expanded).infer(exchange, routing_key, headers)


def _validate(contract: Contract, raw: bytes) -> BaseModel:
    try:
        return contract.model.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise ContractError(f"body does not match event {contract.name!r}: {problems}") from None


def publish_once(
    settings: BusSettings,
    *,
    topology_file: Path | None,
    exchange: str | None,
    routing_key: str | None,
    json_text: str | None,
    body_file: Path | None,
    header_pairs: Iterable[str],
    event: str | None,
    confirm_timeout: float,
) -> str:
    """Publish one message and return the line to print; raise a BusError otherwise."""
    raw = _body(json_text, body_file)
    headers: dict[str, Any] = parse_headers(header_pairs)
    body: bytes | Any = raw
    event_type: str | None = None
    if event is None and exchange is not None and routing_key is not None:
        # Without --event, the one contract this exchange, key and headers match names the
        # message, as the consumer does for a message without type: the publish gets its
        # type, and its body (sent as given) is checked first.
        inferred = _inferred_contract(topology_file, exchange, routing_key, headers)
        if inferred is not None:
            _validate(inferred, raw)
            event_type = inferred.name
    if event is not None:
        contracts = ContractRegistry(load_topology(topology_path(topology_file)).expanded.events)
        contract = contracts.by_name(event)
        if exchange is not None and exchange != contract.exchange:
            raise ContractError(
                f"event {event!r} is published to exchange {contract.exchange!r}, not {exchange!r}"
            )
        exchange = contract.exchange
        if routing_key is None:
            routing_key = contract.routing_key
        body = _validate(contract, raw)
        headers = {**contract.headers, **headers}
        event_type = event
    if exchange is None or routing_key is None:
        raise UsageError("-e EXCHANGE and -k KEY are required (or --event NAME from the topology)")
    # Imported here: the other commands need no publisher (nor pika) loaded.
    from producers.sync import SyncPublisher

    # Only the one target exchange is checked: a publish must not fail on other contracts.
    with SyncPublisher.connect(
        settings,
        exchanges=[exchange],
        confirm_timeout=confirm_timeout,
        app_id="bus-cli",
        connection_name="bus publish",
    ) as publisher:
        message_id = publisher.publish(
            exchange, routing_key, body, event_type=event_type, headers=headers or None
        )
    return f"confirmed: exchange {exchange!r} routing key {routing_key!r} message_id {message_id}"


@click.command("publish")
@topology_option("--topology", "topology_file", purpose=", for --event")
@click.option("-e", "--exchange", default=None, help="Exchange ('' is the default exchange).")
@click.option("-k", "--routing-key", "routing_key", default=None, help="Routing key.")
@click.option("--json", "json_text", default=None, help="The JSON body.")
@click.option(
    "--file", "--body-file", "body_file", type=FILE, default=None,
    help="A file holding the JSON body.",
)  # fmt: skip
@click.option("-H", "--header", "headers", multiple=True, help="Header name=value (repeatable).")
@click.option(
    "--event", default=None, help="Event name: exchange/key from its contract, body validated."
)
@timeout_option("--confirm-timeout", 10.0, "Seconds to wait for the broker's confirm.")
def publish_command(
    topology_file: Path | None,
    exchange: str | None,
    routing_key: str | None,
    json_text: str | None,
    body_file: Path | None,
    headers: tuple[str, ...],
    event: str | None,
    confirm_timeout: float,
) -> None:
    """Confirmed, mandatory publish. Exit 0 routed+confirmed; 1 unroutable/nacked/timeout/broker."""
    line = publish_once(
        broker_settings(),
        topology_file=topology_file,
        exchange=exchange,
        routing_key=routing_key,
        json_text=json_text,
        body_file=body_file,
        header_pairs=headers,
        event=event,
        confirm_timeout=confirm_timeout,
    )
    click.echo(line)


COMMANDS: tuple[click.Command, ...] = (publish_command,)
