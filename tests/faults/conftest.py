"""Fixtures of the fault suite: one throwaway node for the session, N from ``$BUS_FAULTS_N``.

The node (own name, ports, data folder, ``max_message_size`` in its own config, management
plugin) is started once and stopped by pid in the finaliser, whatever the tests did; each
scenario works in a vhost of its own on it. The shared broker is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bus.node import rabbitmq_installed
from tests.faults.scenarios import Lab, default_n


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not rabbitmq_installed():
        pytest.fail("the fault suite needs the rabbitmq-server binary", pytrace=False)
    with Lab.running(Path(tmp_path_factory.mktemp("faults"))) as running:
        yield running


@pytest.fixture(scope="session")
def faults_n() -> int:
    return default_n()
