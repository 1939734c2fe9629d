"""``module:attribute`` names, as topology.yaml's ``model:`` and the CLI's ``--app`` use them."""

from __future__ import annotations

import pytest

import consumers.demo
from bus.importing import import_object
from producers.events import OrderCreated


def test_a_module_an_attribute_a_nested_attribute_and_a_default() -> None:
    assert import_object("producers.events:OrderCreated") is OrderCreated
    assert import_object("producers.events:OrderCreated.model_validate") == (
        OrderCreated.model_validate
    )
    assert import_object("consumers.demo", default_attribute="app") is consumers.demo.app
    assert import_object("consumers.demo") is consumers.demo


@pytest.mark.parametrize(
    ("path", "error"),
    [("no_such_module_here:x", ImportError), ("producers.events:NoSuchEvent", AttributeError)],
)
def test_failures_are_the_callers_to_word(path: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        import_object(path)
