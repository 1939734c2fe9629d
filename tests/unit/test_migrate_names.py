"""``bus migrate QUEUE``: a queue the topology does not declare is a usage error (exit 2),
found before any broker is contacted."""

from __future__ import annotations

from pathlib import Path

import pytest

import bus.migrate
from bus.cli import main
from bus.errors import UsageError
from bus.migrate import migrate
from bus.settings import BusSettings
from bus.topology import load_topology

TOPOLOGY = Path(__file__).parents[2] / "topology.yaml"
# Nothing listens on port 1: reaching a broker at all would fail with a BrokerError (exit 1).
UNREACHABLE = {
    "BUS_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/",
    "BUS_MANAGEMENT_URL": "http://127.0.0.1:1",
}


@pytest.fixture
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in UNREACHABLE.items():
        monkeypatch.setenv(key, value)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("planned against the broker before checking the queue names")

    monkeypatch.setattr(bus.migrate, "plan", refuse)


@pytest.mark.usefixtures("no_broker")
def test_unknown_queue_exits_2_naming_it_and_the_nearest_known(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["migrate", "-f", str(TOPOLOGY), "billing.order"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "error: queue not in the topology: billing.order; nearest known: billing.orders, "
        "billing.orders.dlq, billing.orders.retry.5s"
    ]


@pytest.mark.usefixtures("no_broker")
def test_unknown_queue_without_a_near_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "-f", str(TOPOLOGY), "NOSUCHQUEUE"]) == 2
    assert capsys.readouterr().err == "error: queue not in the topology: NOSUCHQUEUE\n"


@pytest.mark.usefixtures("no_broker")
def test_only_the_unknown_names_are_listed() -> None:
    loaded = load_topology(TOPOLOGY)
    with pytest.raises(UsageError) as caught:
        migrate(loaded, BusSettings(), queues=["billing.orders", "zzz", "audit.log"])
    assert str(caught.value) == "queue not in the topology: zzz"
