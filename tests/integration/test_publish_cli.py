"""``bus publish``: exit 0 only when confirmed and routed; otherwise exit 1 and one error line."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from bus.cli import main
from bus.topology import parse_topology
from tests.support.amqp import declare_with_pika
from tests.support.publisher import TOPOLOGY, depth, drain


@pytest.fixture
def broker(bus_vhost_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    declare_with_pika(bus_vhost_url, parse_topology(TOPOLOGY, "t.yaml").expanded)
    monkeypatch.setenv("BUS_AMQP_URL", bus_vhost_url)
    return bus_vhost_url


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(["publish", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_confirmed_publish_exits_0_with_body_and_headers_as_given(
    broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    body = '{"order_id": "o-1",  "reason": "spaces kept"}'
    code, out, err = run(
        capsys, "-e", "commands", "-k", "order.cancel", "--json", body, "-H", "tenant=acme",
        "-H", "traceparent=00-aa-bb-01",
    )  # fmt: skip
    assert (code, err) == (0, [])
    assert len(out) == 1
    assert out[0].startswith("confirmed:")
    (delivery,) = drain(broker, "orders.commands", 1)
    assert delivery.body == body.encode()
    assert delivery.properties.content_type == "application/json"
    assert delivery.properties.delivery_mode == 2
    assert delivery.properties.message_id in out[0]
    assert delivery.properties.headers == {"tenant": "acme", "traceparent": "00-aa-bb-01"}
    # No --event: the one contract of exchange 'commands' and key 'order.cancel' names it.
    assert delivery.properties.type == "order.cancel"


def test_exchange_and_key_of_a_contract_name_the_event(
    broker: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --event the message still gets its type, so our consumers accept it; a body
    that does not match that contract is refused before anything is sent."""
    code, _, err = run(capsys, "-e", "commands", "-k", "order.cancel", "--json", '{"nope": 1}')
    assert code == 1
    assert len(err) == 1
    assert "does not match event 'order.cancel'" in err[0]
    assert depth(broker, "orders.commands") == 0


def test_body_from_file(broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body_file = tmp_path / "body.json"
    body_file.write_text('{"n": 7}')
    code, _, err = run(capsys, "-e", "limited", "-k", "tiny", "--file", str(body_file))
    assert (code, err) == (0, [])
    assert [json.loads(d.body) for d in drain(broker, "tiny", 1)] == [{"n": 7}]


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["-e", "commands", "-k", "nobody.listens", "--json", "{}"], ["unroutable", "NO_ROUTE"]),
        (["-e", "ghost", "-k", "k", "--json", "{}"], ["ghost", "not found"]),
        (
            [
                *("-e", "commands", "-k", "order.cancel", "--json", '{"order_id": "t"}'),
                *("--confirm-timeout", "1e-9"),
            ],
            ["no confirm within"],
        ),
    ],
    ids=["unroutable", "missing-exchange", "timeout"],
)
def test_failures_exit_1_with_one_line(
    broker: str, capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 1
    assert out == []
    assert len(err) == 1
    assert err[0].startswith("error: ")
    for word in words:
        assert word in err[0]


def test_nack_exits_1(broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "-e", "limited", "-k", "tiny", "--json", '{"n": 1}')[0] == 0
    code, _, err = run(capsys, "-e", "limited", "-k", "tiny", "--json", '{"n": 2}')
    assert code == 1
    assert len(err) == 1
    assert "nacked" in err[0]


def test_event_takes_exchange_and_key_from_contract(
    broker: str, topology_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = '{"order_id": "o-5", "customer_id": "c", "total": "9.90"}'
    code, _, err = run(capsys, "-f", str(topology_file), "--event", "order.created", "--json", body)
    assert (code, err) == (0, [])
    (delivery,) = drain(broker, "orders.all", 1)
    assert delivery.routing_key == "order.created"
    assert delivery.properties.type == "order.created"
    assert json.loads(delivery.body)["order_id"] == "o-5"


def test_event_body_is_validated_before_sending(
    broker: str, topology_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "-f", str(topology_file), "--event", "order.created", "--json", '{"order_id": ""}'
    )
    assert code == 1
    assert len(err) == 1
    assert "does not match event 'order.created'" in err[0]
    assert depth(broker, "orders.all") == 0


def test_event_on_another_exchange_is_refused(
    broker: str, topology_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "-f", str(topology_file), "--event", "order.cancel", "-e", "events",
        "--json", '{"order_id": "x"}',
    )  # fmt: skip
    assert code == 1
    assert "published to exchange 'commands', not 'events'" in err[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["-e", "commands", "-k", "order.cancel", "--json", "{not json"],
        ["-e", "commands", "-k", "order.cancel"],
        ["-e", "commands", "-k", "order.cancel", "--json", "{}", "-H", "no-equals-sign"],
        ["-e", "commands", "--json", "{}"],
    ],
    ids=["bad-json", "no-body", "bad-header", "no-key"],
)
def test_usage_errors_exit_2_and_send_nothing(
    broker: str, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert depth(broker, "orders.commands") == 0


def test_unreachable_broker_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket above is closed.
    monkeypatch.setenv("BUS_AMQP_URL", f"amqp://guest:secret@127.0.0.1:{port}/")
    monkeypatch.setenv("BUS_CONNECT_TIMEOUT", "3")
    code, _, err = run(capsys, "-e", "commands", "-k", "k", "--json", "{}")
    assert code == 1
    assert len(err) == 1
    assert "cannot connect" in err[0]
    assert "secret" not in err[0]
