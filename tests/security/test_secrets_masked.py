"""Passwords never appear in any output: stdout, stderr, log records at DEBUG, worker logs.

Every CLI command that touches the broker runs with a distinctive password, in failure cases
(wrong password, closed port, unresolvable host, management API unreachable) and in success
cases; the test greps everything captured for the password. The unit tests at the top prove
the two mechanisms on their own: ``mask_url`` in error messages and the log record factory
``bus.cli.main`` installs (``install_log_redaction``).
"""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import pytest

from bus.cli import main
from bus.settings import install_log_redaction, redact
from tests.support.celery_worker import Worker, clean_env
from tests.support.users import MakeUser, RoleUser, user_url

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "topology.yaml"
CANARY = "Zq9-leak-canary-7f3a"

# Commands run in-process: everything they print and log (root logger at DEBUG) is captured.
COMMANDS: dict[str, list[str]] = {
    "plan": ["plan", "-f", str(SHIPPED)],
    "apply": ["apply", "-f", str(SHIPPED)],
    "export": ["export"],
    "status": ["status", "-f", str(SHIPPED)],
    "publish": ["publish", "-e", "events", "-k", "order.x", "--json", "{}"],
    "consume": ["consume", "--app", "tests.security.apps:billing", "-f", str(SHIPPED)],
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the mechanisms, no broker -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("amqp://u:pw@h:5672/v", "amqp://u:***@h:5672/v"),
        ("cannot reach amqps://svc:S3c-r3t@host/ now", "cannot reach amqps://svc:***@host/ now"),
        ("<Conn 'https://a:b@c:15671'>", "<Conn 'https://a:***@c:15671'>"),
        ("amqp://u:***@h/", "amqp://u:***@h/"),
        ("amqp://h:5672/v and user:name@example.org", "amqp://h:5672/v and user:name@example.org"),
    ],
)
def test_redact_masks_the_password_of_every_url(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_log_records_of_any_library_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("kombu.connection").debug("connecting to %s", f"amqp://u:{CANARY}@h//")
        logging.getLogger("aiormq").info(f"closed amqps://u:{CANARY}@h:5671/")
        try:
            raise ConnectionError(f"refused amqp://u:{CANARY}@h")
        except ConnectionError:
            logging.getLogger("pika").exception("connection failed")
    text = caplog.text
    assert CANARY not in text
    assert "amqp://u:***@h//" in text
    assert "amqps://u:***@h:5671/" in text
    assert "refused amqp://u:***@h" in text


def test_the_cli_installs_the_masking(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    logging.setLogRecordFactory(logging.LogRecord)  # as a fresh process starts
    try:
        assert main(["validate", "-f", str(SHIPPED)]) == 0
        with caplog.at_level(logging.DEBUG):
            logging.getLogger("celery").debug("broker amqp://u:%s@h//", CANARY)
    finally:
        install_log_redaction()
    assert CANARY not in caplog.text + capsys.readouterr().err


# -- every command, in-process -----------------------------------------------------------------


@pytest.fixture
def success_user(make_user: MakeUser) -> RoleUser:
    """Full rights in the test vhost; administrator so that status and export can read it."""
    return make_user(configure=".*", write=".*", read=".*", tags="administrator")


def _cases(bus_vhost_url: str, management_url: str, user: RoleUser) -> dict[str, dict[str, str]]:
    closed = _closed_port()
    good = {"BUS_AMQP_URL": user.url, "BUS_MANAGEMENT_URL": management_url}
    wrong = user_url(bus_vhost_url, user.name, CANARY)
    return {
        "wrong-password": {"BUS_AMQP_URL": wrong, "BUS_MANAGEMENT_URL": management_url},
        "closed-port": {"BUS_AMQP_URL": user_url(f"amqp://127.0.0.1:{closed}/v", "u", CANARY)},
        "unresolvable-host": {"BUS_AMQP_URL": user_url("amqp://nohost.invalid/v", "u", CANARY)},
        "management-unreachable": {
            **good,
            "BUS_MANAGEMENT_URL": f"http://admin:{CANARY}@127.0.0.1:{closed}",
        },
        "success": good,
    }


CASES = ["wrong-password", "closed-port", "unresolvable-host", "management-unreachable", "success"]


@pytest.mark.parametrize("case", CASES)
def test_no_command_prints_or_logs_the_password(
    case: str,
    make_user: MakeUser,
    success_user: RoleUser,
    bus_vhost_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = _cases(bus_vhost_url, success_user.management_url, success_user)[case]
    monkeypatch.delenv("BUS_MANAGEMENT_URL", raising=False)
    monkeypatch.setenv("BUS_CONNECT_TIMEOUT", "3")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    outputs: dict[str, tuple[int, str]] = {}
    with caplog.at_level(logging.DEBUG):
        for name, argv in COMMANDS.items():
            if name == "consume" and case in ("success", "management-unreachable"):
                continue  # consumes until stopped: see the process tests below
            caplog.clear()
            code = main(argv)
            captured = capsys.readouterr()
            outputs[name] = (code, captured.out + captured.err + caplog.text)
    for name, (code, text) in outputs.items():
        for secret in (CANARY, success_user.password):
            assert secret not in text, f"{case}: `bus {name}` leaked a password:\n{text}"
        if case == "success":
            assert code in (0, 4), f"`bus {name}` failed:\n{text}"  # 4: status unhealthy
        elif not (case == "management-unreachable" and name in ("plan", "apply", "publish")):
            # (plan and apply fall back to AMQP probes; publish needs no management API)
            assert code != 0, f"{case}: `bus {name}` did not fail:\n{text}"
            assert "error: " in text


# -- long-running commands, as processes -------------------------------------------------------

_DEBUG_MAIN = (
    "import logging, sys; logging.basicConfig(level=logging.DEBUG); "
    "from bus.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _env(**values: str) -> dict[str, str]:
    env = clean_env()
    env.update(values, BUS_CONNECT_TIMEOUT="3", BUS_TOPOLOGY=str(SHIPPED))
    return env


def _consume_argv() -> list[str]:
    return [sys.executable, "-c", _DEBUG_MAIN, *COMMANDS["consume"]]


def _worker_argv() -> list[str]:
    bus = str(Path(sys.executable).parent / "bus")
    return [bus, "worker", "-Q", "reports.build", "--pool", "solo", "-l", "DEBUG"]


@pytest.mark.parametrize("command", ["consume", "worker"])
@pytest.mark.parametrize("case", ["wrong-password", "closed-port", "management-unreachable"])
def test_start_up_failures_of_consume_and_worker_do_not_leak(
    command: str,
    case: str,
    success_user: RoleUser,
    bus_vhost_url: str,
    workers: list[Worker],
) -> None:
    # With the management API unreachable the AMQP URL is right, but nothing is applied in
    # the vhost: start-up still fails (passive checks).
    env = _cases(bus_vhost_url, success_user.management_url, success_user)[case]
    argv = _consume_argv() if command == "consume" else _worker_argv()
    process = Worker(argv, _env(**env))
    workers.append(process.start())
    code = process.wait_exit(120)
    assert code != 0, process.output
    assert "error: " in process.output
    assert "Traceback" not in process.output
    assert "internal error" not in process.output
    assert CANARY not in process.output
    assert success_user.password not in process.output


@pytest.mark.parametrize("command", ["consume", "worker"])
def test_running_consume_and_worker_do_not_leak(
    command: str,
    success_user: RoleUser,
    bus_applied_vhost: str,
    workers: list[Worker],
) -> None:
    env = _env(BUS_AMQP_URL=success_user.url, BUS_MANAGEMENT_URL=success_user.management_url)
    argv = _consume_argv() if command == "consume" else _worker_argv()
    process = Worker(argv, env)
    workers.append(process.start())
    text = "consuming billing.orders" if command == "consume" else " ready."
    process.wait_running(lambda: text in process.output, f"{text!r} in the output")
    assert process.stop(60) == 0, process.output
    assert "DEBUG" in process.output  # the most talkative level was on
    assert f"{success_user.name}:" in process.output  # URLs were logged, masked
    assert success_user.password not in process.output
