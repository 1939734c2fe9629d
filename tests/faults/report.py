"""Run every fault scenario with N messages on a throwaway node and print the results table.

::

    python -m tests.faults.report [--n 10000] [--only NAME ...] [--markdown]

The scenarios are those of ``tests/faults/test_scenarios.py`` (same code, larger N). The
shared broker is never touched: a throwaway node is started and stopped by pid. Client and
runtime logs go to a file (its path is printed at the end), not to the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.faults.scenarios import SCENARIOS, Lab, Outcome, run_scenario

COLUMNS = (
    "scenario",
    "sent",
    "confirmed",
    "failed",
    "consumed",
    "lost",
    "duplicates",
    "unexpected",
    "result",
    "seconds",
)


def table(outcomes: Sequence[Outcome], *, markdown: bool = False) -> str:
    rows = [[str(o.row()[c]) for c in COLUMNS] for o in outcomes]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, rows)])


async def run_all(lab: Lab, names: Sequence[str], n: int) -> list[Outcome]:
    outcomes = []
    for name in names:
        print(f"running {name} (N={n}) ...", file=sys.stderr, flush=True)
        outcome = await run_scenario(name, lab, n)
        print(f"  {outcome.row()['result']} in {outcome.seconds:.1f}s", file=sys.stderr)
        outcomes.append(outcome)
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.report", description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="messages per scenario")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="these scenarios")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    workdir = Path(tempfile.mkdtemp(prefix="bus-faults-report-"))
    log_file = workdir / "report.log"
    logging.basicConfig(
        filename=log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    started = time.monotonic()
    print("starting a throwaway RabbitMQ node ...", file=sys.stderr, flush=True)
    with Lab.running(workdir) as lab:
        outcomes = asyncio.run(run_all(lab, names, args.n))
    print(table(outcomes, markdown=args.markdown))
    print()
    for outcome in outcomes:
        facts = ", ".join(f"{k}={v}" for k, v in outcome.facts.items())
        print(f"{outcome.scenario}: {facts}")
        if outcome.error:
            print(f"  error: {outcome.error}")
    print(f"\nN={args.n}, total {time.monotonic() - started:.0f}s, log: {log_file}")
    return 0 if all(o.row()["result"] == "PASS" for o in outcomes) else 1


if __name__ == "__main__":
    raise SystemExit(main())
