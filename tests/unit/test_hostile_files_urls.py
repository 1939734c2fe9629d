"""Hostile input without a broker: unbounded files, backtracking patterns, passwords in URLs.

Issue 25 findings 5, 6 and 9. Every command here would read gigabytes, spin for hours or print
a piece of the password before the fix; each one now answers with one line and exit 2.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from bus.cli import main
from bus.files import MAX_TOPOLOGY_BYTES
from bus.patterns import compile_name_pattern
from bus.publish import DEFAULT_MAX_MESSAGE_SIZE
from bus.settings import BusSettings, mask_url, redact, url_problem

SHIPPED = Path(__file__).resolve().parents[2] / "topology.yaml"


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


# -- finding 5: every file the CLI reads is bounded before it is read -------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "-f", "/dev/zero"],
        ["plan", "-f", "/dev/zero"],
        ["route", "-f", "/dev/zero", "-e", "events"],
        ["publish", "-e", "events", "-k", "k", "--file", "/dev/zero"],
        ["publish", "-f", "/dev/zero", "--event", "order.created", "--json", "{}"],
    ],
    ids=["validate", "plan", "route", "publish-body", "publish-topology"],
)
def test_a_character_device_is_refused_before_reading(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _out, err = _run(argv, capsys)
    assert code == 2
    assert err == [err[0]]
    assert err[0].startswith("error: ")
    assert "not a regular file" in err[0]
    assert "/dev/zero" in err[0]


def test_a_fifo_without_a_writer_is_refused_without_blocking(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "topology.yaml"
    os.mkfifo(fifo)
    # A writer that never writes: a plain open() + read() would wait for it forever.
    done = threading.Event()
    outcome: list[Any] = []

    def run() -> None:
        outcome.append(_run(["validate", "-f", str(fifo)], capsys))
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    if not done.wait(30):
        # Unblock the reader so the thread ends, then fail.
        with open(fifo, "wb"):
            pass
        pytest.fail("bus validate blocked on a FIFO")
    code, _, err = outcome[0]
    assert code == 2
    assert len(err) == 1
    assert "not a regular file" in err[0]


@pytest.mark.parametrize(
    ("argv_for", "limit"),
    [
        (lambda f: ["validate", "-f", f], MAX_TOPOLOGY_BYTES),
        (lambda f: ["publish", "-e", "x", "-k", "k", "--file", f], DEFAULT_MAX_MESSAGE_SIZE),
    ],
    ids=["topology", "publish-body"],
)
def test_a_file_over_the_limit_is_refused_without_reading_it(
    argv_for: Any, limit: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big"
    # Sparse: the size says "too large" although no byte was written; a reader that looked
    # at the content would find zeros (invalid YAML / JSON) and say something else.
    with open(big, "wb") as f:
        f.truncate(limit + 1)
    code, _, err = _run(argv_for(str(big)), capsys)
    assert code == 2
    assert len(err) == 1
    assert f"larger than the limit of {limit} bytes" in err[0]


def test_a_topology_just_under_the_limit_still_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = SHIPPED.read_text(encoding="utf-8")
    padded = text + "#" * (MAX_TOPOLOGY_BYTES - len(text.encode()) - 1) + "\n"
    assert len(padded.encode()) == MAX_TOPOLOGY_BYTES
    path = tmp_path / "topology.yaml"
    path.write_text(padded, encoding="utf-8")
    code, out, err = _run(["validate", "-f", str(path)], capsys)
    assert (code, err) == (0, [])
    assert "valid (" in out


def test_missing_and_directory_topology_files_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["validate", "-f", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert err == [f"error: topology file not found: {tmp_path / 'nope.yaml'}"]


# -- finding 6: patterns we evaluate run in linear time; the rest are refused at validation --


def test_a_backtracking_pattern_matches_a_hostile_name_at_once() -> None:
    pattern = compile_name_pattern(r"^(a+)+$")
    # Python's re needs ~2^n steps here (n = 60: centuries); RE2 is linear in the name.
    assert pattern.search("a" * 60 + "!") is False
    assert pattern.search("a" * 60) is True
    assert compile_name_pattern(r"^legacy\.").search("legacy.x") is True


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"^(a)\1$", "invalid or unsupported"),
        (r"^(?=legacy)", "perl operator"),
        (r"a*+", "bad repetition"),
        ("(", "invalid regular expression (missing )"),
        # A POSIX class to RE2, a plain set to Python: read differently, so refused.
        ("[[:alpha:]]+", "Possible nested set"),
    ],
)
def test_unmanaged_patterns_re2_cannot_run_are_refused_with_file_and_line(
    pattern: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(f"version: 1\nunmanaged:\n  - '^ok$'\n  - '{pattern}'\n", encoding="utf-8")
    code, _, err = _run(["validate", "-f", str(path)], capsys)
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"{path}:4:5: unmanaged[1]: invalid ")
    assert reason in err[0]


def test_allow_idle_patterns_are_checked_before_the_broker_is_asked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A closed port: the pattern must be refused before any connection is tried.
    monkeypatch.setenv("BUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:1/")
    monkeypatch.setenv("BUS_MANAGEMENT_URL", "http://127.0.0.1:1")
    code, _, err = _run(["status", "-f", str(SHIPPED), "--allow-idle", r"(?<=x)y"], capsys)
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("error: --allow-idle '(?<=x)y': invalid or unsupported")


# -- finding 9: no part of a password in any line, no DNS lookup of a fragment ---------------

SECRET_URLS = [
    # password "x@host/SECRETTAIL": urlsplit sees host "host", vhost "SECRETTAIL@..."
    "amqp://svc:x@host/SECRETTAIL@127.0.0.1:5672/%2F",
    # password "p@ss:w/SECRETTAIL": host "ss", port "w"
    "amqp://svc:p@ss:w/SECRETTAIL@127.0.0.1:5672/%2F",
    # password "pa/SECRETTAIL": the rest moves into the path
    "amqp://svc:pa/SECRETTAIL@127.0.0.1:5672/%2F",
    # password "pa?SECRETTAIL" / "pa#SECRETTAIL": the rest moves into the query / fragment
    "amqp://svc:pa?SECRETTAIL@127.0.0.1:5672/%2F",
    "amqp://svc:pa#SECRETTAIL@127.0.0.1:5672/%2F",
]


@pytest.mark.parametrize("url", SECRET_URLS)
def test_a_malformed_url_is_refused_without_echoing_or_resolving_it(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    looked_up: list[Any] = []
    real = socket.getaddrinfo

    def spy(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", spy)
    monkeypatch.setenv("BUS_AMQP_URL", url)
    for argv in (["plan", "-f", str(SHIPPED)], ["status", "-f", str(SHIPPED)]):
        code, out, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        assert len(err) == 1
        assert "percent-encode the password" in err[0]
        for piece in ("SECRETTAIL", "svc", "127.0.0.1", "p@", "x@", "pa/", "pa?", "pa#"):
            assert piece not in err[0], (piece, err[0])
        assert "SECRETTAIL" not in out
    assert looked_up == []


@pytest.mark.parametrize("url", SECRET_URLS)
def test_mask_url_and_redact_hide_every_fragment(url: str) -> None:
    assert url_problem(url) is not None
    assert mask_url(url) == "amqp://***"
    assert "SECRETTAIL" not in redact(f"cannot connect to {url}: refused")
    with pytest.raises(ValueError, match="percent-encode the password"):
        BusSettings(amqp_url=url)


def test_a_percent_encoded_password_is_accepted_and_masked() -> None:
    url = "amqp://svc:p%40ss%3Aw%2FSECRETTAIL@127.0.0.1:5672/vh"
    assert url_problem(url) is None
    settings = BusSettings(amqp_url=url)
    assert settings.credentials() == ("svc", "p@ss:w/SECRETTAIL")
    assert mask_url(url) == "amqp://svc:***@127.0.0.1:5672/vh"
    # An unencoded ':' alone is unambiguous: the password runs from the first ':' to the '@'.
    assert BusSettings(amqp_url="amqp://svc:pa:ss@h/").credentials() == ("svc", "pa:ss")
