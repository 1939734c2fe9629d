"""Shapes the worker refuses before Celery (or RabbitMQ's dead-lettering) sees them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from bus.celery_guard import forged_death_problem, protocol_problem

REAL_DEATH = {
    "count": 2,
    "reason": "rejected",
    "queue": "reports.build",
    "time": datetime(2026, 1, 1),
    "exchange": "tasks",
    "routing-keys": ["reports.build"],
}


@pytest.mark.parametrize("headers", [{}, {"task": "t"}, {"x-death": [REAL_DEATH]}, None])
def test_x_death_as_rabbitmq_writes_it_passes(headers: Any) -> None:
    assert forged_death_problem(headers) is None


@pytest.mark.parametrize(
    "deaths",
    [
        [1, 2, 3],
        [{}],
        [],
        "died",
        [{**REAL_DEATH, "count": "2"}],
        [{**REAL_DEATH, "count": True}],
        [{**REAL_DEATH, "queue": 5}],
        [REAL_DEATH, {"reason": "expired"}],
        [{**REAL_DEATH, "routing-keys": "k"}],
    ],
)
def test_forged_x_death_is_named(deaths: Any) -> None:
    assert forged_death_problem({"x-death": deaths}) is not None


class _Message:
    def __init__(self, headers: Any, payload: Any) -> None:
        self.headers = headers
        self._payload = payload

    @property
    def payload(self) -> Any:
        if isinstance(self._payload, Exception):
            raise self._payload
        return self._payload


VALID = {"task": "t", "id": "i", "retries": 0, "timelimit": [None, 3.5], "eta": None}


@pytest.mark.parametrize(
    ("headers", "payload"),
    [
        (VALID, [[1], {"a": 1}, {"callbacks": None}]),
        (VALID, [[], {}, None]),
        ({"id": "proto1"}, "anything: protocol 1 is Celery's"),
        (VALID, ValueError("undecodable: Celery's own path")),
    ],
)
def test_valid_protocol_2_and_others_pass(headers: Any, payload: Any) -> None:
    assert protocol_problem(_Message(headers, payload)) is None


@pytest.mark.parametrize(
    ("change", "payload", "expected"),
    [
        ({"task": ["t"]}, None, "'task'"),
        ({"id": {"a": 1}}, None, "'id'"),
        ({"retries": "many"}, None, "'retries'"),
        ({"retries": True}, None, "'retries'"),
        ({"timelimit": ["a", "b"]}, None, "'timelimit'"),
        ({"timelimit": [1]}, None, "'timelimit'"),
        ({"group": {"g": 1}}, None, "'group'"),
        ({}, [[], [1], {}], "kwargs"),
        ({}, [[], {}, 5], "embed"),
        ({}, ["abc", {}, {}], "args"),
        ({}, {"args": []}, "[args, kwargs, embed]"),
    ],
)
def test_protocol_2_shape_problems_are_named(change: Any, payload: Any, expected: str) -> None:
    message = _Message({**VALID, **change}, payload or [[], {}, {}])
    problem = protocol_problem(message)
    assert problem is not None
    assert expected in problem
