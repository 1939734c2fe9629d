"""Which topology file an app built without one reads: ``bus worker -f``, then $BUS_TOPOLOGY."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.celery_app import build_app
from bus.celery_app.config import default_topology_file, use_topology_file
from bus.settings import BusSettings

TOPOLOGY = """
version: 1
exchanges:
  jobs: {type: topic}
queues:
  QUEUE:
    celery: {routing_key: jobs.run}
    bindings: [{exchange: jobs, routing_key: "jobs.#"}]
"""


@pytest.fixture(autouse=True)
def _no_worker_file() -> Iterator[None]:
    yield
    use_topology_file(None)


def _write(tmp_path: Path, queue: str) -> Path:
    file = tmp_path / f"{queue}.yaml"
    file.write_text(TOPOLOGY.replace("QUEUE", queue))
    return file


def test_the_worker_file_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUS_TOPOLOGY", str(_write(tmp_path, "from.env")))
    assert default_topology_file() == tmp_path / "from.env.yaml"
    use_topology_file(_write(tmp_path, "from.worker"))
    app = build_app(settings=BusSettings())
    assert list(app.amqp.queues) == ["from.worker"]


def test_without_either_the_default_is_the_current_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BUS_TOPOLOGY", raising=False)
    assert default_topology_file() == Path("topology.yaml")
