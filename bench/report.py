"""How the suite prints its results: one table per group, then the paired ratio lines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench._harness import Spread

if TYPE_CHECKING:
    from bench.suite import Case, Group

__all__ = ["LABELS", "render"]

LABELS = {
    "raw-aio-pika": "raw aio-pika",
    "raw-aio-pika-uvloop": "raw aio-pika +uvloop",
    "raw-pika": "raw pika",
    "ours": "ours",
    "ours-uvloop": "ours +uvloop",
    "ours-sync": "ours sync",
    "ours-x2": "ours 2 publishers",
    "ours-x4": "ours 4 publishers",
    "ours-p1": "ours (prefetch x1)",
    "plain": "plain Celery",
    "java": "Java client",
    "java-ours": "Java client, our properties",
}


def _cell(summary: dict[str, Any], case_id: str, metric: str, digits: int) -> str:
    spread = summary["cases"].get(case_id, {}).get("spread", {}).get(metric)
    if spread is None:
        return "—" if case_id not in summary["cases"] else "failed"
    return Spread(spread["median"], spread["min"], spread["max"]).format(digits)


def render(
    cases: Sequence[Case], summary: dict[str, Any], group_specs: dict[str, Group]
) -> list[str]:
    lines: list[str] = []
    for name, group in group_specs.items():
        mine = [c for c in cases if c.group == name]
        if not mine:
            continue
        lines += ["", f"{name}: {group.title}"]
        if group.columns:
            lines.append("| case | " + " | ".join(group.columns) + " |")
            lines.append("|---|" + "---|" * len(group.columns))
            for case in mine:
                cells = [_cell(summary, case.id, m, group.digits) for m in group.columns]
                label = f"{case.variant} {LABELS.get(case.impl, case.impl)}"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        else:
            order = list(LABELS)
            impls = sorted(
                dict.fromkeys(c.impl for c in mine),
                key=lambda i: order.index(i) if i in order else len(order),
            )
            lines.append("| case | " + " | ".join(LABELS.get(i, i) for i in impls) + " |")
            lines.append("|---|" + "---|" * len(impls))
            for variant in dict.fromkeys(c.variant for c in mine):
                cells = [
                    _cell(summary, f"{name}/{variant}/{i}", group.metric, group.digits)
                    if any(c.id == f"{name}/{variant}/{i}" for c in mine)
                    else "—"
                    for i in impls
                ]
                lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    ratios = summary["ratios"]
    if ratios:
        lines += ["", "ratios ours/raw, paired within each round: median [min-max] (n rounds)"]
        for r in ratios:
            better = "lower is better" if group_specs[r["group"]].lower_is_better else ""
            lines.append(
                f"ratio {r['group']} {r['variant']} {r['metric']}: "
                f"{LABELS.get(r['ours'], r['ours'])} / {LABELS.get(r['raw'], r['raw'])} = "
                f"{Spread(r['median'], r['min'], r['max']).format(2)} ({len(r['values'])})"
                + (f" {better}" if better else "")
            )
    return lines
