"""The pure parts of the bench suite: percentiles, spreads, paired ratios, selection, report.

No broker and no timing: the runner is replaced by a function returning fixed figures.
"""

from __future__ import annotations

import json

import pytest

from bench import java_client
from bench._harness import Spread, latency_summary, paired_ratios, percentile
from bench.suite import Case, catalogue, groups, parse, render, run_rounds, select, summarise


def test_percentile_interpolates_between_ranks() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile([10.0, 20.0], 50) == 15.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="must be within"):
        percentile(values, 101)


def test_latency_summary_is_in_milliseconds_and_sorts() -> None:
    samples = [i / 1000 for i in range(1000, 0, -1)]  # 1..1000 ms, reversed
    summary = latency_summary(samples)
    assert summary["max"] == pytest.approx(1000.0)
    assert summary["p50"] == pytest.approx(500.5)
    assert summary["p99"] == pytest.approx(990.01)
    assert set(summary) == {"p50", "p90", "p99", "p99.9", "max"}


def test_spread_and_its_format() -> None:
    spread = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high) == (2.5, 1.0, 10.0)
    assert spread.format(1) == "2.5 [1.0-10.0]"
    assert Spread.of([1234.0]).format() == "1,234 [1,234-1,234]"
    with pytest.raises(ValueError, match="no values"):
        Spread.of([])


def test_ratios_are_paired_within_a_round_and_skip_failed_rounds() -> None:
    rounds: dict[str, list[float | None]] = {
        "ours": [10.0, None, 30.0, 8.0],
        "raw": [5.0, 6.0, 0.0, 4.0],
    }
    # round 2: ours failed; round 3: raw reported 0 (no ratio), round 4 pairs 8/4.
    assert paired_ratios(rounds, "ours", "raw") == [2.0, 2.0]
    assert paired_ratios(rounds, "ours", "missing") == []


def test_selection_by_id_prefix_and_memory_only_when_named() -> None:
    cases = catalogue(parse(["--no-java"]))
    ids = {c.id for c in select(cases, [])}
    assert "publish/w1000/ours" in ids
    assert "publish/w1000/raw-aio-pika" in ids
    assert not any(i.startswith("memory/") for i in ids)
    assert {c.id for c in select(cases, ["publish/w100"])} == {
        "publish/w100/raw-aio-pika",
        "publish/w100/ours",
        "publish/w100/ours-uvloop",
        "publish/w100/ours-sync",
    }
    assert [c.group for c in select(cases, ["memory"])] == ["memory"]
    # A prefix matches whole segments only: "publish/w1" is not "publish/w100".
    assert {c.variant for c in select(cases, ["publish/w1"])} == {"w1"}


def test_java_baseline_cases_where_the_client_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(java_client, "available", lambda: None)
    ids = {c.id for c in catalogue(parse([]))}
    assert {"publish/w1000/java", "publish/w1000/java-ours", "consume/p100/java"} <= ids
    assert "publish/w1/java-ours" not in ids
    assert not any(c.impl.startswith("java") for c in catalogue(parse(["--no-java"])))
    monkeypatch.setattr(java_client, "available", lambda: "Java baseline skipped: missing javac")
    assert not any(c.impl.startswith("java") for c in catalogue(parse([])))


def test_quick_shortens_everything_and_explicit_options_win() -> None:
    quick = parse(["--quick", "--seconds", "2"])
    assert quick.rounds == 1
    assert quick.seconds == 2.0
    assert quick.rates == [1000]
    full = parse([])
    assert full.rounds == 3
    assert full.rates == [1000, 2000, 3000]
    assert full.memory_messages == 1_000_000


def test_rounds_shuffle_pair_and_render_ratio_lines() -> None:
    opts = parse(["--quick"])
    cases = [
        Case("publish", "w100", "raw-aio-pika", "x:raw"),
        Case("publish", "w100", "ours", "x:ours"),
        Case("latency", "1000", "raw-aio-pika", "x:lraw"),
        Case("latency", "1000", "ours", "x:lours"),
    ]
    figures = {
        "x:raw": iter([100.0, 200.0, 150.0]),
        "x:ours": iter([150.0, 220.0, 300.0]),
    }
    seen: list[tuple[str, dict[str, object]]] = []

    def runner(target: str, params: dict[str, object]) -> dict[str, object]:
        seen.append((target, params))
        if target.startswith("x:l"):
            return {"p50": 1.0, "p99": 4.0 if target == "x:lraw" else 2.0, "max": 9.0,
                    "publisher_lag_max_ms": 0.5}  # fmt: skip
        return {"msg_s": next(figures[target])}

    orders: list[list[str]] = []

    def shuffle(order: list[Case]) -> None:
        order.reverse()
        orders.append([c.id for c in order])

    results, failures = run_rounds(
        cases, 3, "amqp://u", runner=runner, shuffle=shuffle, log=lambda _: None
    )
    assert not failures
    assert len(orders) == 3
    assert len(seen) == 12
    assert all(params["url"] == "amqp://u" for _, params in seen)
    summary = summarise(cases, results, groups(opts))
    ratio = next(r for r in summary["ratios"] if r["group"] == "publish")
    assert ratio["values"] == [1.5, 1.1, 2.0]
    assert ratio["median"] == 1.5
    lines = render(cases, summary, groups(opts))
    text = "\n".join(lines)
    assert "ratio publish w100 msg_s: ours / raw aio-pika = 1.50 [1.10-2.00] (3)" in text
    assert "ratio latency 1000 p99: ours / raw aio-pika = 0.50" in text
    assert "| w100 | 150 [100-200] | 220 [150-300] |" in text
    json.dumps(summary)  # what --json writes must serialise


def test_a_failed_case_is_reported_not_fatal() -> None:
    from bench._harness import CaseFailed

    cases = [Case("publish", "w1", "raw-aio-pika", "x:raw"), Case("publish", "w1", "ours", "x:o")]

    def runner(target: str, params: dict[str, object]) -> dict[str, object]:
        if target == "x:o":
            raise CaseFailed("boom")
        return {"msg_s": 1.0}

    results, failures = run_rounds(cases, 2, "u", runner=runner, log=lambda _: None)
    assert len(failures) == 2
    assert results["publish/w1/ours"] == [None, None]
    summary = summarise(cases, results, groups(parse([])))
    assert summary["ratios"] == []
    assert "| w1 | 1 [1-1] | failed |" in "\n".join(render(cases, summary, groups(parse([]))))
