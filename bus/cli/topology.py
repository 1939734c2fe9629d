"""``bus validate``, ``graph``, ``route``, ``check``, ``asyncapi``: the file alone, no broker."""

from __future__ import annotations

from pathlib import Path

import click
import yaml

from bus.asyncapi import asyncapi_document, dump_document
from bus.cli.support import file_option, load, output_option, write_output
from bus.graph import render

__all__ = ["COMMANDS"]


@click.command()
@file_option
@click.option("--expanded", is_flag=True, help="Print the topology with shorthands expanded.")
def validate(file: Path | None, expanded: bool) -> None:
    """Validate the topology file (no broker). Exit 0 valid, 2 invalid."""
    loaded = load(file)
    if expanded:
        click.echo(
            yaml.safe_dump(loaded.expanded.to_data(), sort_keys=False, allow_unicode=True), nl=False
        )
    else:
        x = loaded.expanded
        click.echo(
            f"{loaded.file}: valid ({len(x.exchanges)} exchanges, {len(x.queues)} queues, "
            f"{len(x.bindings)} bindings, {len(x.events)} events)"
        )


@click.command()
@file_option
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True
)
def graph(file: Path | None, fmt: str) -> None:
    """Draw the topology: bindings, alternate and dead-letter edges."""
    click.echo(render(load(file).expanded, fmt), nl=False)


@click.command()
@file_option
@click.option("-e", "--exchange", required=True, help='Exchange ("" = the default exchange).')
@click.option("-k", "--key", "routing_key", default="", help="Routing key.")
@click.option(
    "-H",
    "--header",
    "headers",
    multiple=True,
    metavar="NAME[:TYPE]=VALUE",
    help="Header; TYPE is str (default), int, bool, null, json or timestamp: types count.",
)
@click.option("--trace", is_flag=True, help="Print the path through exchanges (to stderr).")
@click.option(
    "--rabbitmq", default=None, metavar="VERSION", help="Broker version's rules (3.10, 4.0)."
)
@click.option(
    "--on",
    type=click.Choice(["reject", "expire"]),
    default=None,
    help="Print where the copies go when rejected / expired in each queue reached.",
)
def route(
    file: Path | None,
    exchange: str,
    routing_key: str,
    headers: tuple[str, ...],
    trace: bool,
    rabbitmq: str | None,
    on: str | None,
) -> None:
    """Simulate a publish: the queues reached, one per line (no broker). Exit 0, 2."""
    from bus.routing import DeadLetterReason, Router, parse_header_option

    table = dict(parse_header_option(h) for h in headers)
    reason: DeadLetterReason | None = "reject" if on == "reject" else "expire" if on else None
    router = Router(load(file).expanded, rabbitmq=rabbitmq)
    result = router.route(exchange, routing_key, table or None, on=reason)
    if trace:
        for line in result.describe_trace():
            click.echo(line, err=True)
    for queue in sorted(result.dead_letter_queues if on else result.queues):
        click.echo(queue)


@click.command()
@file_option
@click.option("--rabbitmq", default=None, metavar="VERSION", help="The broker's version (4.0).")
@click.option("--target", default=None, metavar="VERSION", help="A version to move to (4.3).")
def check(file: Path | None, rabbitmq: str | None, target: str | None) -> int:
    """Reachability lint: exit 1 on errors, 0 with warnings only, 2 when invalid."""
    from bus.lint import exit_code, lint

    findings = lint(load(file), rabbitmq=rabbitmq, target=target)
    for finding in findings:
        click.echo(str(finding))
    return exit_code(findings)


@click.command()
@file_option
@output_option("Write to FILE instead of stdout (JSON when FILE ends in .json, else YAML).")
def asyncapi(file: Path | None, output: Path | None) -> None:
    """AsyncAPI 3.0 document of the exchanges, queues and events. Exit 0, 1 bad model, 2 invalid."""
    as_json = output is not None and output.suffix.lower() == ".json"
    write_output(dump_document(asyncapi_document(load(file)), as_json=as_json), output)


COMMANDS: tuple[click.Command, ...] = (validate, graph, route, check, asyncapi)
