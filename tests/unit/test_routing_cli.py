"""``bus route``: queues on stdout, the trace on stderr, exit codes 0 and 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.cli import main

TOPOLOGY = str(Path(__file__).parents[2] / "topology.yaml")


def _route(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["route", "-f", TOPOLOGY, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_queues_one_per_line_sorted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _route(capsys, "-e", "events", "-k", "order.created")
    assert code == 0
    assert out == "analytics.all\naudit.log\nbilling.orders\n"
    assert err == ""


def test_trace_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _route(capsys, "-e", "events", "-k", "order.created", "--trace")
    assert code == 0
    assert out == "analytics.all\naudit.log\nbilling.orders\n"
    first, *hops = err.splitlines()
    assert first == "publish to exchange events key 'order.created'"
    assert sorted(hops) == [
        "exchange audit -> queue audit.log  [key '#']",
        "exchange events -> exchange audit  [key 'order.#']",
        "exchange events -> queue analytics.all  [key '#']",
        "exchange events -> queue billing.orders  [key 'order.*']",
    ]


def test_unroutable_prints_nothing_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _route(capsys, "-e", "commands", "-k", "nothing.here")
    assert (code, out) == (0, "")


def test_default_exchange(capsys: pytest.CaptureFixture[str]) -> None:
    assert _route(capsys, "-e", "", "-k", "billing.orders.retry.1s")[:2] == (
        0,
        "billing.orders.retry.1s\n",
    )


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["-H", "priority=high"], "email.priority\n"),
        (["-H", "tier=gold"], "email.priority\n"),
        (["-H", "kind=newsletter"], "email.bulk\n"),
        (["-H", "kind=newsletter", "-H", "priority=high"], "email.bulk\nemail.priority\n"),
        (["-H", "priority=low"], ""),
        # the binding holds the string "high": a typed value does not match it
        (["-H", 'priority:json=["high"]'], ""),
    ],
)
def test_headers(capsys: pytest.CaptureFixture[str], headers: list[str], expected: str) -> None:
    assert _route(capsys, "-e", "notifications", *headers)[:2] == (0, expected)


def test_typed_headers_matter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "version: 1\nexchanges: {h: {type: headers}}\n"
        "queues: {five: {bindings: [{exchange: h, arguments: {n: 5}}]}}\n"
    )
    assert main(["route", "-f", str(path), "-e", "h", "-H", "n=5"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["route", "-f", str(path), "-e", "h", "-H", "n:int=5"]) == 0
    assert capsys.readouterr().out == "five\n"


def test_on_reject_prints_the_dead_letter_queues(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _route(capsys, "-e", "events", "-k", "order.paid", "--on", "reject", "--trace")
    assert code == 0
    # analytics.all and audit.log have no dead-letter exchange: those copies are dropped
    assert out == "billing.orders.dlq\n"
    assert "dead-lettered from queue billing.orders:" in err


def test_on_expire_from_a_retry_queue_goes_back_to_its_owner(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["-e", "", "-k", "billing.orders.retry.5s", "--on", "expire"]
    assert _route(capsys, *args)[:2] == (0, "billing.orders\n")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "nope", "-k", "x"], "error: unknown exchange 'nope'\n"),
        (["-e", "audit", "-k", "x"], "error: exchange 'audit' is internal"),
        (["-e", "events", "-H", "n:int=x"], "error: header 'n': 'x' is not an integer\n"),
        (["-e", "events", "-H", "novalue"], "error: header 'novalue': expected NAME=VALUE"),
        (["-e", "events", "-H", "CC=k"], "error: header 'CC' must be an array"),
    ],
)
def test_refused_publishes_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = _route(capsys, *args)
    assert (code, out) == (2, "")
    assert err.startswith(message)


def test_invalid_topology_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("version: 2\n")
    assert main(["route", "-f", str(path), "-e", "x"]) == 2
    assert "unsupported version 2" in capsys.readouterr().err
