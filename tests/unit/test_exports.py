"""`__all__` and the real public names do not drift apart."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import connectors
import worker


def _modules() -> list[ModuleType]:
    found = []
    for package in (worker, connectors):
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            try:
                found.append(importlib.import_module(info.name))
            except ImportError:
                continue  # a connector whose optional driver is not installed
    return found


MODULES = [m for m in _modules() if hasattr(m, "__all__")]


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_all__names_exist_and_cover_public_definitions(module: ModuleType) -> None:
    exported = set(module.__all__)
    missing = sorted(name for name in exported if not hasattr(module, name))
    assert not missing, f"{module.__name__}.__all__ names what it lacks: {missing}"
    defined = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
    }
    unlisted = sorted(defined - exported)
    assert not unlisted, f"{module.__name__} defines public names not in __all__: {unlisted}"


def test_all__every_module_declares_it() -> None:
    lacking = [m.__name__ for m in _modules() if not hasattr(m, "__all__")]
    assert not lacking, f"modules without __all__: {lacking}"
