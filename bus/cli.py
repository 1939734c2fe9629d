"""The ``bus`` command: errors become one ``error: ...`` line and an exit code, no traceback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from bus.asyncapi import asyncapi_document, dump_document
from bus.celery_plain import celery_config_command
from bus.cli_support import broker_settings, plan_exit_code, settings_problems, write_output
from bus.contracts_cli import contracts
from bus.dlq_cli import dlq
from bus.errors import BusError, TopologyError
from bus.graph import render
from bus.settings import install_log_redaction, redact
from bus.topology import LoadedTopology, load_topology

__all__ = ["cli", "main"]

_file_option = click.option(
    "-f",
    "--file",
    "file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Topology file (default: $BUS_TOPOLOGY, then ./topology.yaml).",
)


def _load(file: Path | None) -> LoadedTopology:
    return load_topology(file)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """amqp-bus: a raw-AMQP message bus on RabbitMQ, declared in topology.yaml."""


cli.add_command(contracts)


@cli.command()
@_file_option
@click.option("--expanded", is_flag=True, help="Print the topology with shorthands expanded.")
def validate(file: Path | None, expanded: bool) -> None:
    """Validate the topology file (no broker). Exit 0 valid, 2 invalid."""
    loaded = _load(file)
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


@cli.command()
@_file_option
@click.option(
    "--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True
)
def graph(file: Path | None, fmt: str) -> None:
    """Draw the topology: bindings, alternate and dead-letter edges."""
    click.echo(render(_load(file).expanded, fmt), nl=False)


@cli.command()
@_file_option
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
    router = Router(_load(file).expanded, rabbitmq=rabbitmq)
    result = router.route(exchange, routing_key, table or None, on=reason)
    if trace:
        for line in result.describe_trace():
            click.echo(line, err=True)
    for queue in sorted(result.dead_letter_queues if on else result.queues):
        click.echo(queue)


@cli.command()
@_file_option
@click.option("--rabbitmq", default=None, metavar="VERSION", help="The broker's version (4.0).")
@click.option("--target", default=None, metavar="VERSION", help="A version to move to (4.3).")
def check(file: Path | None, rabbitmq: str | None, target: str | None) -> int:
    """Reachability lint: exit 1 on errors, 0 with warnings only, 2 when invalid."""
    from bus.lint import exit_code, lint

    findings = lint(_load(file), rabbitmq=rabbitmq, target=target)
    for finding in findings:
        click.echo(str(finding))
    return exit_code(findings)


@cli.command("consume")
@_file_option
@click.option("--app", "app_path", required=True, metavar="MODULE:APP", help="consumers.demo:app")
@click.option("--grace", type=float, default=None, help="Seconds for running handlers at shutdown.")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics here.")
@click.argument("queues", nargs=-1)
def consume_command(
    file: Path | None, app_path: str, grace: float | None, metrics_port: int | None,
    queues: tuple[str, ...],
) -> None:  # fmt: skip
    """Run a consumer app until SIGTERM/SIGINT (exit 0 on a clean shutdown)."""
    from consumers.cli import run_app

    run_app(app_path, file=file, queues=queues, grace=grace, metrics_port=metrics_port)


@cli.command("publish")
@click.option(
    "-f",
    "--topology",
    "topology_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Topology file, for --event (default: $BUS_TOPOLOGY, then ./topology.yaml).",
)
@click.option("-e", "--exchange", default=None, help="Exchange ('' is the default exchange).")
@click.option("-k", "--routing-key", "routing_key", default=None, help="Routing key.")
@click.option("--json", "json_text", default=None, help="The JSON body.")
@click.option(
    "--file",
    "--body-file",
    "body_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A file holding the JSON body.",
)
@click.option("-H", "--header", "headers", multiple=True, help="Header name=value (repeatable).")
@click.option(
    "--event", default=None, help="Event name: exchange/key from its contract, body validated."
)
@click.option(
    "--confirm-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker's confirm.",
)
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
    from producers.cli import publish_once

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


@cli.command("plan")
@_file_option
@click.option("--prune", is_flag=True, help="Show what apply --prune would delete.")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 3 when changes are pending, 1 when anything could not be verified, 0 in sync.",
)
def plan_command(file: Path | None, prune: bool, detailed_exitcode: bool) -> int:
    """Diff the topology against the live vhost. Exit 0, 1 conflict/broker, 2 invalid, 3 changes."""
    from bus.broker import PlanConflicts, plan

    result = plan(_load(file), broker_settings(), prune=prune)
    click.echo(result.render(), nl=False)
    if result.conflicts:
        raise PlanConflicts(result, "bus apply will change nothing until they are resolved")
    return plan_exit_code(result, detailed_exitcode)


@cli.command("apply")
@_file_option
@click.option("--prune", is_flag=True, help="Delete what the topology does not declare.")
@click.option(
    "--recreate-empty", is_flag=True, help="Replace a conflicting queue when it is empty."
)
@click.option(
    "--allow-data-loss", is_flag=True, help="With --prune: delete queues holding messages too."
)
@click.option("--dry-run", is_flag=True, help="Plan and stop: change nothing.")
def apply_command(
    file: Path | None, prune: bool, recreate_empty: bool, allow_data_loss: bool, dry_run: bool
) -> None:
    """Apply the plan; nothing changes while a conflict exists. Exit 0, 1, 2."""
    from bus.broker import apply
    from bus.errors import UsageError

    if allow_data_loss and not prune:
        raise UsageError("--allow-data-loss only applies with --prune")
    loaded = _load(file)
    result = apply(
        loaded, broker_settings(), prune=prune, recreate_empty=recreate_empty,
        allow_data_loss=allow_data_loss, dry_run=dry_run,
        on_plan=lambda p: click.echo(p.render(), nl=False),
    )  # fmt: skip
    click.echo(result.summary())


@cli.command("export")
@click.option("--vhost", default=None, help="Vhost to export (default: the URL's).")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Write to FILE instead of stdout.",
)  # fmt: skip
def export_command(vhost: str | None, output: Path | None) -> None:
    """topology.yaml of an existing vhost (applying it back plans as no change). Exit 0, 1."""
    from bus.broker import export_topology
    from bus.errors import BrokerError

    exported = export_topology(broker_settings(), vhost)
    if output is None:
        click.echo(exported.text, nl=False)
    else:
        try:
            output.write_text(exported.text, encoding="utf-8")
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror or exc}") from None
        click.echo(f"wrote {output} (vhost {exported.vhost!r})", err=True)
    for issue in exported.issues:
        click.echo(f"warning: {issue}", err=True)
    if exported.issues:
        raise BrokerError(
            f"vhost {exported.vhost!r} holds {len(exported.issues)} thing(s) topology.yaml "
            "rejects (see the warnings): fix them on the broker or in the file"
        )


@cli.command()
@_file_option
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write to FILE instead of stdout (JSON when FILE ends in .json, else YAML).",
)
def asyncapi(file: Path | None, output: Path | None) -> None:
    """AsyncAPI 3.0 document of the exchanges, queues and events. Exit 0, 1 bad model, 2 invalid."""
    as_json = output is not None and output.suffix.lower() == ".json"
    write_output(dump_document(asyncapi_document(_load(file)), as_json=as_json), output)


@cli.command()
@_file_option
@click.option("-Q", "--queues", required=True, help="Comma-separated topology Celery queues.")
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
)
@click.option("-A", "--app", "app_path", default="consumers.tasks:app", show_default=True)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus task metrics here.")
def worker(
    file: Path | None,
    queues: str,
    concurrency: int | None,
    pool: str,
    app_path: str,
    loglevel: str,
    metrics_port: int | None,
) -> int:
    """A Celery worker on topology queues, declaring nothing (exit codes as celery)."""
    from bus.celery_app import run_worker

    return run_worker(
        app_path, queues.split(","), file, concurrency, pool, loglevel, metrics_port=metrics_port
    )


@cli.command()
@_file_option
@click.option(
    "--schedule-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Beat state file (default: $BUS_BEAT_SCHEDULE_FILE, then ./celerybeat-schedule).",
)
@click.option("-l", "--loglevel", default="INFO", show_default=True)
def beat(file: Path | None, schedule_file: Path | None, loglevel: str) -> int:
    """Celery beat sending the topology's celery.schedules; run exactly one per deployment."""
    from bus.beat import run_beat

    return run_beat(file, schedule_file, loglevel)


@cli.command()
@_file_option
@click.option("--vhost", default=None, help="Vhost (default: the topology's, then the URL's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--watch",
    type=float,
    is_flag=False,
    flag_value=2.0,
    default=None,
    help="Refresh every N seconds (default 2) until interrupted.",
)
@click.option(
    "--allow-idle", multiple=True, metavar="REGEX", help="Queues allowed to have no consumer."
)
@click.option(
    "--workers", is_flag=True, help="Celery workers and their active tasks (needs monitoring)."
)
@click.option(
    "--workers-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Seconds to wait for workers to answer.",
)
def status(
    file: Path | None,
    vhost: str | None,
    as_json: bool,
    watch: float | None,
    allow_idle: tuple[str, ...],
    workers: bool,
    workers_timeout: float,
) -> int:
    """Depths, consumers, rates; exit 4 when a DLQ holds messages or a queue is unserved."""
    import json
    import time

    from bus.broker.management import ManagementClient
    from bus.status import UNHEALTHY, collect_status, collect_workers, render_table

    loaded = _load(file)
    settings = broker_settings()
    target = vhost or (loaded.model.vhost.name if loaded.model.vhost else None) or settings.vhost
    with ManagementClient.from_settings(settings) as management:
        while True:
            report = collect_status(
                loaded.expanded, settings, management, target, allow_idle=allow_idle
            )
            if workers:
                found = collect_workers(loaded.expanded, settings, target, timeout=workers_timeout)
                report.monitoring, report.workers = found is not None, found
            if as_json:
                click.echo(json.dumps(report.to_data(), indent=2))
            else:
                if watch:
                    click.clear()
                click.echo(render_table(report), nl=False)
            if not watch:
                return 0 if report.healthy else UNHEALTHY
            time.sleep(watch)


@cli.command()
@_file_option
@click.option("--vhost", default=None, help="Use this vhost (default: a new one, deleted after).")
@click.option("--keep", is_flag=True, help="Keep the demo vhost and its messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def demo(file: Path | None, vhost: str | None, keep: bool, as_json: bool) -> int:
    """The whole bus end to end; exit 1 if an expected delivery did not happen."""
    import json

    from bus.demo import render_table, run_demo

    err = sys.stderr
    interactive = err.isatty()

    def progress(line: str) -> None:
        if interactive:
            err.write("\r\033[K" + line)
            err.flush()
        elif line:
            err.write(line + "\n")

    report = run_demo(
        topology=file,
        vhost=vhost,
        keep=keep,
        echo=lambda line: click.echo(line, err=True),
        progress=progress,
    )
    if as_json:
        click.echo(json.dumps(report.to_data(), indent=2))
    else:
        click.echo(render_table(report), nl=False)
    return 0 if report.ok else 1


cli.add_command(dlq)
cli.add_command(celery_config_command)
cli.add_command(__import__("bus.outbox.cli", fromlist=["outbox"]).outbox)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script: run the CLI and map errors to exit codes."""
    # Passwords never reach a log line or an error line, whatever library wrote it.
    install_log_redaction()
    try:
        result: Any = cli.main(args=argv, prog_name="bus", standalone_mode=False)
    except TopologyError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        return exc.exit_code
    except BusError as exc:
        click.echo(f"error: {redact(' '.join(str(exc).split()))}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {redact(exc.format_message())}", err=True)
        return exc.exit_code
    except ValidationError as exc:  # BusSettings() from the environment: never echo the input
        click.echo(f"error: {redact(settings_problems(exc))}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still one line, never a traceback
        click.echo(f"error: internal error: {type(exc).__name__}: {redact(str(exc))}", err=True)
        return 1
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
