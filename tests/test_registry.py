"""Registry[T]: registration, lookup with close-match hints, wildcards and entry-point plugins."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

import pytest

from alframe.errors import AlframeError, ConfigError
from alframe.registry import PluginLoadWarning, Registry


def make_registry() -> Registry[Any]:
    registry: Registry[Any] = Registry("widgets")

    @registry.register("coreset")
    class Coreset:
        def __init__(self, first_pick: str = "mean") -> None:
            self.first_pick = first_pick

    @registry.register("xssr")
    class Xssr:
        def __init__(self, alpha: float = 0.5) -> None:
            self.alpha = alpha

    registry.add("random", lambda: "random instance")
    return registry


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    loaded: Any

    def load(self) -> Any:
        if isinstance(self.loaded, Exception):
            raise self.loaded
        return self.loaded


def test_register_create_get_and_names() -> None:
    registry = make_registry()
    assert registry.names() == ["coreset", "random", "xssr"]
    assert registry.create("xssr", alpha=0.3).alpha == 0.3
    assert registry.create("random") == "random instance"
    assert registry.get("coreset").__name__ == "Coreset"
    assert "xssr" in registry and "nope" not in registry
    assert len(registry) == 3
    assert list(registry) == ["coreset", "random", "xssr"]
    assert registry.entry_point_group == "alframe.widgets"


def test_duplicate_names_are_refused_and_keep_the_first() -> None:
    registry = make_registry()
    with pytest.raises(ConfigError, match="'xssr' is already registered"):

        @registry.register("xssr")
        class Other:
            pass

    assert registry.get("xssr").__name__ == "Xssr"


@pytest.mark.parametrize("bad_name", ["", "   "])
def test_empty_names_are_refused(bad_name: str) -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        make_registry().add(bad_name, object)


def test_unknown_name_suggests_close_matches_and_lists_all() -> None:
    registry = make_registry()
    with pytest.raises(ConfigError) as error:
        registry.create("xsr")
    message = str(error.value)
    assert "Did you mean 'xssr'" in message
    assert "coreset, random, xssr" in message
    assert isinstance(error.value, AlframeError)
    with pytest.raises(ConfigError, match="Did you mean 'coreset'"):
        registry.get("CoreSet")


def test_unknown_parameter_is_refused_with_accepted_ones() -> None:
    with pytest.raises(ConfigError, match=r"'alpah' \(did you mean 'alpha'\?\).*accepted: alpha"):
        make_registry().create("xssr", alpah=0.1)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", ["coreset", "random", "xssr"]),
        ("x*", ["xssr"]),
        ("*s*", ["coreset", "xssr"]),
        ("?andom", ["random"]),
        ("nothing*", []),
    ],
)
def test_wildcards(pattern: str, expected: list[str]) -> None:
    assert make_registry().names(pattern) == expected


def test_entry_point_plugins_are_loaded_lazily_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    class Plugged:
        def __init__(self, size: int = 1) -> None:
            self.size = size

    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        calls.append(group)
        return [FakeEntryPoint("plugged", "third_party.mod:Plugged", Plugged)]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    registry = make_registry()
    assert calls == []  # nothing loaded at construction
    assert registry.create("plugged", size=3).size == 3
    assert registry.names() == ["coreset", "plugged", "random", "xssr"]
    assert calls == ["alframe.widgets"]  # loaded once


def test_broken_or_clashing_plugins_only_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_entry_points(*, group: str) -> list[FakeEntryPoint]:
        return [
            FakeEntryPoint("broken", "bad.mod:Thing", ImportError("no module named bad")),
            FakeEntryPoint("xssr", "other.mod:Xssr", object),
        ]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    registry = make_registry()
    with pytest.warns(PluginLoadWarning) as record:
        names = registry.names()
    assert names == ["coreset", "random", "xssr"]
    messages = " ".join(str(w.message) for w in record)
    assert "'broken'" in messages and "no module named bad" in messages
    assert "already registered" in messages
    assert registry.get("xssr").__name__ == "Xssr"  # the built-in wins


def test_strategy_registry_is_a_registry_of_kind_strategies() -> None:
    from alframe import strategies

    assert strategies.STRATEGIES.entry_point_group == "alframe.strategies"
    assert {"coreset", "entropy", "margin", "random", "typiclust", "xssr"} <= set(
        strategies.names()
    )
    assert strategies.names("*ssr") == ["xssr"]
    with pytest.raises(ConfigError, match="Did you mean 'coreset'"):
        strategies.create("corset")
