"""Hostile input against the real broker: plan on hostile names, drift checks that cannot see.

Issue 25 findings 6 and 10. Each test runs in a vhost of its own; users made here are deleted
by the ``make_user`` fixture.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pika
import pytest

from bus.broker.management import ManagementClient
from bus.cli import main
from bus.provision import ProvidedBroker
from tests.support.commands import bus_argv, run
from tests.support.plan import run_cli_as
from tests.support.users import MakeUser, user_url

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"


def _declare(url: str, *queues: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        for queue in queues:
            channel.queue_declare(queue, durable=True)
    finally:
        connection.close()


@pytest.fixture
def applied(bus_applied_vhost: str, bus_vhost_url: str) -> str:
    """The admin URL of a vhost holding the shipped topology."""
    return bus_vhost_url


def test_plan_prune_with_a_backtracking_unmanaged_pattern_and_a_hostile_name(
    applied: str, tmp_path: Path, bus_management_url: str
) -> None:
    # Python's re would need ~2^60 steps on this name (the issue measured 39 s at 30 'a's,
    # doubling per character); the subprocess must finish, and say the queue is unmanaged.
    hostile = "a" * 60 + "!"
    _declare(applied, hostile, "legacy.keep")
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        SHIPPED.read_text(encoding="utf-8") + "unmanaged: ['^(a+)+!$', '^legacy\\.']\n",
        encoding="utf-8",
    )
    env = {**os.environ, "BUS_AMQP_URL": applied, "BUS_MANAGEMENT_URL": bus_management_url}
    done = run(bus_argv("plan", "--prune", "-f", str(topology)), env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(hostile in line and "^(a+)+!$" in line for line in lines), done.stdout
    assert any("legacy.keep" in line and "unmanaged" in line for line in lines), done.stdout
    assert not any(line.lstrip().startswith("-") for line in lines), done.stdout


@pytest.fixture
def bus_management_url(bus_broker: ProvidedBroker) -> str:
    return bus_broker.management_url


def test_detailed_exitcode_fails_when_a_read_only_user_cannot_verify(
    applied: str,
    make_user: MakeUser,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Read permission only and no management tag: the API refuses it, plan falls back to
    # AMQP probes, and nothing can be compared field by field.
    reader = make_user(configure="^$", write="^$", read=".*")
    argv = ["plan", "--detailed-exitcode", "-f", str(SHIPPED)]
    code, out, err = run_cli_as(reader.env(), argv, monkeypatch, capsys)
    assert "unverified" in out
    assert "Not verified:" in out
    assert code == 1, (out, err)
    errors = [line for line in err.splitlines() if line.strip()]
    assert len(errors) == 1
    assert errors[0].startswith("error: ")
    assert "could not be verified" in errors[0]
    # Without the flag the plan is still a report, exit 0.
    assert main(["plan", "-f", str(SHIPPED)]) == 0
    capsys.readouterr()


def test_detailed_exitcode_is_0_for_the_admin_on_the_same_vhost(
    applied: str,
    bus_management_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = {"BUS_AMQP_URL": applied, "BUS_MANAGEMENT_URL": bus_management_url}
    argv = ["plan", "--detailed-exitcode", "-f", str(SHIPPED)]
    code, out, _ = run_cli_as(env, argv, monkeypatch, capsys)
    assert code == 0
    assert "unverified" not in out


def test_a_percent_encoded_password_with_reserved_characters_connects(
    applied: str,
    bus_vhost: str,
    bus_management: ManagementClient,
    bus_management_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What "percent-encode the password" asks for works on every path: the password holds
    # each character that, unencoded, makes the URL refused.
    name, password = f"bus-sec-{uuid.uuid4().hex[:10]}", "p@ss:w/x?y#z"
    bus_management.create_user(name, password, tags="management")
    try:
        bus_management.set_permissions(bus_vhost, name, configure="^$", write="^$", read=".*")
        url = user_url(applied, name, password)
        assert "p%40ss%3Aw%2Fx%3Fy%23z@" in url
        monkeypatch.setenv("BUS_AMQP_URL", url)
        monkeypatch.setenv("BUS_MANAGEMENT_URL", bus_management_url)
        assert main(["plan", "--detailed-exitcode", "-f", str(SHIPPED)]) == 0
        captured = capsys.readouterr()
        assert "unverified" not in captured.out
        assert password not in captured.out + captured.err
    finally:
        bus_management.delete_user(name)
