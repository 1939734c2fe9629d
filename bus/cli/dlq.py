"""``bus dlq list / show / replay / purge``: the command group over :mod:`bus.dlq`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bus.cli.support import POSITIVE, broker_settings, file_option, load
from bus.errors import BusError, TopologyError
from bus.settings import BusSettings, with_vhost

if TYPE_CHECKING:  # the broker clients load only when a dlq command runs
    from bus.broker.management import ManagementClient
    from bus.dlq_replay import ReplayReport

__all__ = ["COMMANDS", "dlq"]

UNHEALTHY = 4  # as `bus status`: a dead-letter queue holds messages

_vhost_option = click.option(
    "--vhost", default=None, help="Vhost (default: the topology's, then the URL's)."
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _filters(func: Any) -> Any:
    func = click.option(
        "--message-id", "message_ids", multiple=True, help="Only this message id (repeatable)."
    )(func)
    func = click.option(
        "--exception-type", "exception_types", multiple=True,
        help="Only this x-exception-type (full or class name; repeatable).",
    )(func)  # fmt: skip
    return click.option(
        "--reason", "reasons", multiple=True,
        help="Only this x-failure-reason (or broker reason: rejected, expired...; repeatable).",
    )(func)  # fmt: skip


def _settings(file: Path | None, vhost: str | None) -> BusSettings:
    settings = broker_settings()
    if vhost is None:
        try:
            model = load(file).model
            vhost = model.vhost.name if model.vhost else None
        except TopologyError:
            if file is not None:
                raise
    if vhost is None:
        return settings
    return settings.model_copy(update={"amqp_url": with_vhost(settings.amqp_url, vhost)})


def _management(settings: BusSettings) -> ManagementClient | None:
    """For quorum delivery limits; without the management API the guard is skipped."""
    from bus.broker.management import ManagementClient

    try:
        return ManagementClient.from_settings(settings)
    except BusError as exc:
        click.echo(
            f"warning: management API unavailable ({exc}): delivery limits unchecked", err=True
        )
        return None


@click.group("dlq")
def dlq() -> None:
    """Dead letters: list the queues, show messages, replay or purge them."""


@dlq.command("list")
@file_option
@_vhost_option
@_json_option
@click.option("--scan", type=click.IntRange(min=0), default=10_000, show_default=True,
              help="Messages read per queue for the counts.")  # fmt: skip
def list_command(file: Path | None, vhost: str | None, as_json: bool, scan: int) -> int:
    """Every dead-letter queue: depth, oldest age, counts by reason and exception type.

    Exit 0, or 4 when any holds messages."""
    from bus.dlq import list_dead_letters, render_dead_letters

    settings = _settings(file, vhost)
    management = _management(settings)
    try:
        report = list_dead_letters(load(file).expanded, settings, management, scan=scan)
    finally:
        if management is not None:
            management.close()
    if as_json:
        click.echo(json.dumps({"vhost": settings.vhost, "queues": [q.to_data() for q in report]},
                              indent=2))  # fmt: skip
    else:
        for line in render_dead_letters(report):
            click.echo(line)
    return UNHEALTHY if any(q.depth for q in report) else 0


@dlq.command("show")
@click.argument("queue")
@file_option
@_vhost_option
@click.option("-n", "count", type=click.IntRange(min=1), default=10, show_default=True)
@_filters
@_json_option
def show_command(
    queue: str, file: Path | None, vhost: str | None, count: int,
    reasons: tuple[str, ...], exception_types: tuple[str, ...], message_ids: tuple[str, ...],
    as_json: bool,
) -> int:  # fmt: skip
    """The first N (selected) messages with properties, failure headers and a body preview.

    Nothing is consumed: the messages stay where they are, in order."""
    from bus.dlq import Selection, age_text, show

    settings = _settings(file, vhost)
    selection = Selection(reasons, exception_types, message_ids)
    management = _management(settings)
    try:
        depth, messages = show(settings, queue, selection, count=count, management=management)
    finally:
        if management is not None:
            management.close()
    if as_json:
        whole = {"queue": queue, "depth": depth, "messages": [m.to_data() for m in messages]}
        click.echo(json.dumps(whole, indent=2))
        return 0
    click.echo(f"{queue}: {depth} messages; showing {len(messages)} ({selection.describe()})")
    for m in messages:
        data = m.to_data()
        click.echo(f"\n#{data['position']} {data['message_id']}  {data['reason']}  "
                   f"{data['exception_type'] or ''}  failed in {data['failed_queue']}  "
                   f"age {age_text(data['age_seconds'])}")  # fmt: skip
        if data["exception_message"]:
            click.echo(f"  exception: {data['exception_message']}")
        props = {k: v for k, v in data["properties"].items() if v is not None}
        click.echo(f"  properties: {json.dumps(props)}")
        click.echo(f"  headers: {json.dumps(data['headers'])}")
        click.echo(f"  body ({data['body_bytes']} bytes): {data['body_preview']}")
    return 0


class _Progress:
    """A count per second: one rewritten line on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.started = time.monotonic()

    def __call__(self, report: ReplayReport) -> None:
        now = time.monotonic()
        if now - self.last < 1.0:
            return
        self.last = now
        done = report.replayed + report.purged
        rate = done / max(now - self.started, 1e-6)
        line = (f"{report.queue}: {done} {report.action.rstrip('e')}ed of {report.depth}, "
                f"{rate:.0f}/s, recovered {report.recovered}")  # fmt: skip
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def end(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")


def _finish(report: ReplayReport, as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps(report.to_data(), indent=2))
    else:
        for entry in report.planned:
            click.echo("would " + report.action + ": " + json.dumps(entry))
        click.echo(report.summary())
        for why, n in report.failures.items():
            click.echo(f"  {n} stayed in the queue: {why}")
        for note in report.notes:
            click.echo(f"  note: {note}")
    return 0 if report.ok else 1


@dlq.command("replay")
@click.argument("queue")
@file_option
@_vhost_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N messages.")
@_filters
@click.option(
    "--to-exchange",
    is_flag=True,
    help="To x-original-exchange/routing key instead of the queue it failed in.",
)
@click.option(
    "--rate",
    type=POSITIVE,
    default=None,
    metavar="N",
    help="At most N messages per second.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be sent where; change nothing.")
@_json_option
def replay_command(
    queue: str, file: Path | None, vhost: str | None, limit: int | None,
    reasons: tuple[str, ...], exception_types: tuple[str, ...], message_ids: tuple[str, ...],
    to_exchange: bool, rate: float | None, dry_run: bool, as_json: bool,
) -> int:  # fmt: skip
    """Send the selected dead letters back; each is acked only once its copy is confirmed.

    Exit 0; 1 when any could not be sent (it stays in the queue)."""
    from bus.dlq import Selection
    from bus.dlq_replay import replay

    settings = _settings(file, vhost)
    selection = Selection(reasons, exception_types, message_ids, limit)
    management = _management(settings)
    progress = _Progress()
    try:
        report = replay(settings, queue, selection, to_exchange=to_exchange, rate=rate,
                        dry_run=dry_run, management=management, progress=progress)  # fmt: skip
    finally:
        progress.end()
        if management is not None:
            management.close()
    return _finish(report, as_json)


@dlq.command("purge")
@click.argument("queue")
@file_option
@_vhost_option
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N messages.")
@_filters
@click.option("--yes", is_flag=True, help="Really delete (without it: print what would go).")
@_json_option
def purge_command(
    queue: str, file: Path | None, vhost: str | None, limit: int | None,
    reasons: tuple[str, ...], exception_types: tuple[str, ...], message_ids: tuple[str, ...],
    yes: bool, as_json: bool,
) -> int:  # fmt: skip
    """Delete the selected dead letters; the others stay in place and in order."""
    from bus.dlq import Selection
    from bus.dlq_replay import purge

    settings = _settings(file, vhost)
    selection = Selection(reasons, exception_types, message_ids, limit)
    management = _management(settings)
    progress = _Progress()
    try:
        report = purge(settings, queue, selection, dry_run=not yes, management=management,
                       progress=progress)  # fmt: skip
    finally:
        progress.end()
        if management is not None:
            management.close()
    return _finish(report, as_json)


COMMANDS: tuple[click.Command, ...] = (dlq,)
