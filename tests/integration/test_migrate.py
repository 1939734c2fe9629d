"""Live migration (issue 21): classic queue with messages -> quorum with a dead-letter exchange,
under a steady publisher and our consumer runtime; total-queue checks (0 lost, duplicates
reported). ``BUS_MIGRATE_N`` sets N (default 2000; the issue's figure is N=20000).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bus.broker import plan
from bus.broker.management import ManagementClient
from bus.migrate import migrate
from bus.settings import BusSettings
from tests.support.consumer import queue_depth, wait_until
from tests.support.migrate import new_topology, run_scenario
from tests.support.plan import settings_for

ROOT = Path(__file__).parents[2]


def _check_done(settings: BusSettings, tmp_path: Path) -> None:
    after = plan(new_topology(tmp_path), settings)
    assert not after.conflicts, after.render()
    assert not after.has_changes, after.render()
    assert "orders.q.migrating" not in {i.name for i in after.items}


async def test_classic_to_quorum_under_load_loses_nothing(
    bus_vhost_url: str,
    bus_management: ManagementClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def run(new_file: Path, url: str) -> None:
        loaded = new_topology(tmp_path)
        await asyncio.to_thread(migrate, loaded, settings_for(url, bus_management))

    outcome = await run_scenario(bus_vhost_url, tmp_path, run)
    with capsys.disabled():
        print(f"\nmigration under load: {outcome.line()}")
    assert outcome.lost == set()
    assert outcome.bad_properties == []
    assert outcome.duplicates >= 0
    assert outcome.consumers_after == 1, "the consumer is attached to the new queue"
    _check_done(settings_for(bus_vhost_url, bus_management), tmp_path)


async def test_migration_killed_mid_move_and_run_again_loses_nothing(
    bus_vhost_url: str,
    bus_management: ManagementClient,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    killed: list[bool] = []

    async def run(new_file: Path, url: str) -> None:
        env = {
            **os.environ,
            "BUS_AMQP_URL": url,
            "BUS_MANAGEMENT_URL": bus_management.base_url,
            "PYTHONUNBUFFERED": "1",
        }
        command = [sys.executable, "-m", "bus", "migrate", "-f", str(new_file), "orders.q"]
        first = subprocess.Popen(  # noqa: ASYNC220
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        assert first.stdout is not None
        try:
            while True:
                line = await asyncio.to_thread(first.stdout.readline)
                if not line or "step 3" in line:
                    break
            await asyncio.sleep(0.3)  # inside the move
            first.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.wait, 30)
            killed.append(first.returncode == -signal.SIGKILL)
        finally:
            if first.poll() is None:
                first.kill()
            first.communicate()
        # Half-done: the temporary queue shows it, and plan names it.
        loaded = new_topology(tmp_path)
        half = plan(loaded, settings_for(url, bus_management))
        assert any(i.name == "orders.q.migrating" for i in half.conflicts), half.render()
        again = await asyncio.to_thread(
            subprocess.run, command, env=env, cwd=ROOT, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert again.returncode == 0, again.stdout + again.stderr
        assert "resuming an unfinished migration" in again.stdout

    outcome = await run_scenario(bus_vhost_url, tmp_path, run)
    with capsys.disabled():
        print(f"\nmigration killed once and run again: {outcome.line()}")
    assert killed == [True]
    assert outcome.lost == set()
    assert outcome.bad_properties == []
    assert outcome.consumers_after == 1
    _check_done(settings_for(bus_vhost_url, bus_management), tmp_path)
    await wait_until(lambda: queue_depth(bus_vhost_url, "orders.q.dlq") == (0, 0))
