"""Every fault scenario at small N (``$BUS_FAULTS_N``, default 500) on a throwaway node.

The same code runs at N = 10,000 with ``python -m tests.faults.report``. Each test passes
when the total-queue check passes (nothing confirmed lost, nothing unexpected, every publish
confirmed or raised) and the scenario's own guarantees held; duplicates are printed.
"""

from __future__ import annotations

import pytest

from tests.faults.scenarios import SCENARIOS, Lab, run_scenario


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(lab: Lab, faults_n: int, name: str) -> None:
    outcome = await run_scenario(name, lab, faults_n)
    print(outcome.row(), outcome.facts)
    assert outcome.error is None, outcome.error
    outcome.check.assert_ok()
