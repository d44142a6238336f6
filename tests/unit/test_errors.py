"""The error tree: every error the worker raises on purpose is a `WorkerError`, drawn
in `worker.errors`' docstring under the base it derives from."""

from __future__ import annotations

import inspect
import re

import pytest

import worker.errors as errors
from worker.circuit import CircuitOpen as CircuitOpenOfCircuit
from worker.errors import (
    CircuitOpen,
    FatalError,
    InvalidInput,
    NotOurs,
    SourceError,
    WorkerError,
)
from worker.pipeline import UnknownLookup
from worker.render import RenderError

DRAWN_ELSEWHERE = [RenderError, UnknownLookup]


def _tree() -> dict[str, int]:
    """Each name drawn in the docstring's tree, with its depth."""
    drawn: dict[str, int] = {}
    for line in (errors.__doc__ or "").splitlines():
        match = re.match(r"^    ([│ ]*(?:[├└]── )?)([A-Z]\w+)\b", line)
        if match:
            drawn[match.group(2)] = len(match.group(1)) // 4
    return drawn


def _classes() -> list[type[BaseException]]:
    own = [
        value
        for value in vars(errors).values()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    ]
    return own + DRAWN_ELSEWHERE


@pytest.mark.parametrize("error", _classes(), ids=lambda e: e.__name__)
def test_tree__every_error_is_drawn_under_its_base(error: type[BaseException]) -> None:
    drawn = _tree()
    assert error.__name__ in drawn, f"{error.__name__} is not drawn in worker.errors"
    assert issubclass(error, WorkerError)
    depth = len([c for c in error.__mro__ if issubclass(c, WorkerError)]) - 1
    assert drawn[error.__name__] == depth, f"{error.__name__} is drawn at the wrong depth"


def test_tree__the_moved_errors_keep_their_old_names() -> None:
    assert CircuitOpenOfCircuit is CircuitOpen
    assert issubclass(NotOurs, FatalError)
    assert not issubclass(CircuitOpen, SourceError)  # no `except SourceError` counts it


def test_invalid_input__reads_as_its_errors() -> None:
    refused = InvalidInput(["the order id is missing", "the date must be a date"], "+1555")
    assert str(refused) == "the order id is missing; the date must be a date"
    assert refused.reply_to == "+1555"
