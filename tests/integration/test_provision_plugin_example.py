"""The README's example of another service's test runs as written, warnings as errors.

It runs in its own pytest, the way another service would run it: in a RabbitMQ container
(``BUS_TEST_BROKER=container``) when this machine can start one, else on this session's broker.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bus.provision import ProvidedBroker, docker_available
from bus.settings import BrokerChoiceSettings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")

SERVICE_TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
queues:
  billing.orders:
    bindings:
      - {exchange: events, routing_key: order.created}
"""


def _example() -> str:
    section = README.split("## The pytest plugin", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 1, "the plugin section has one complete example"
    return str(blocks[0])


def _container_possible() -> bool:
    if not docker_available(BrokerChoiceSettings().docker_host):
        return False
    from bus.container import choose_image

    return choose_image(None, pull=False) is not None


def test_the_readme_plugin_example_passes(
    pytester: pytest.Pytester, bus_broker: ProvidedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"
    )
    (pytester.path / "topology.yaml").write_text(SERVICE_TOPOLOGY)
    (pytester.path / "test_orders.py").write_text(_example())
    for name in ("BUS_TEST_AMQP_URL", "BUS_TEST_MANAGEMENT_URL", "BUS_MANAGEMENT_URL"):
        monkeypatch.delenv(name, raising=False)
    args = ["-p", "no:cacheprovider", "-q"]
    if _container_possible():
        monkeypatch.setenv("BUS_TEST_BROKER", "container")
    else:
        args += [
            f"--bus-amqp-url={bus_broker.amqp_url}",
            f"--bus-management-url={bus_broker.management_url}",
        ]
    result = pytester.runpytest_subprocess(*args, timeout=300)
    result.assert_outcomes(passed=1)
