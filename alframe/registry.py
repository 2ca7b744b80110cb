"""A small named-plugin registry shared by strategies, rankers, pseudo-labellers, ...

A :class:`Registry` maps names to factories (usually classes). Built-in plugins register themselves
with the :meth:`Registry.register` decorator; third-party packages add plugins through the
entry-point group ``alframe.<kind>`` (e.g. ``alframe.strategies``) in their own packaging metadata::

    [project.entry-points."alframe.strategies"]
    my_strategy = "my_package.strategies:MyStrategy"

Entry points are loaded lazily, the first time a registry is asked for a name, and only once.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.metadata
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from alframe.errors import ConfigError

T = TypeVar("T")

ENTRY_POINT_PREFIX = "alframe."


class PluginLoadWarning(UserWarning):
    """A third-party plugin advertised through an entry point could not be loaded."""


class Registry(Generic[T]):
    """Names → factories for one kind of plugin (``"strategies"``, ``"rankers"``, ...).

    Args:
        kind: plural noun naming what is registered; also names the entry-point group
            ``alframe.<kind>`` searched for third-party plugins.

    Example:
        >>> STRATEGIES: Registry[type] = Registry("strategies")
        >>> @STRATEGIES.register("random")
        ... class RandomStrategy: ...
        >>> STRATEGIES.names("r*")
        ['random']
    """

    def __init__(self, kind: str) -> None:
        if not kind or not kind.replace("_", "").isalnum():
            raise ValueError(f"registry kind must be a plain word, got {kind!r}")
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = False

    @property
    def entry_point_group(self) -> str:
        """The entry-point group searched for third-party plugins, ``alframe.<kind>``."""
        return ENTRY_POINT_PREFIX + self.kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering a factory under ``name``.

        Args:
            name: the public name (as written in recipes).

        Returns:
            A decorator that registers its argument and returns it unchanged.

        Raises:
            ConfigError: ``name`` is empty or already registered.
        """

        def decorator(factory: T) -> T:
            self.add(name, factory)
            return factory

        return decorator

    def add(self, name: str, factory: T) -> None:
        """Registers ``factory`` under ``name`` (the non-decorator form of :meth:`register`).

        Raises:
            ConfigError: ``name`` is empty or already registered.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(
                f"{self.kind}: a plugin name must be a non-empty string, got {name!r}"
            )
        if name in self._entries:
            raise ConfigError(
                f"{self.kind}: the name {name!r} is already registered "
                f"(by {_describe(self._entries[name])}); choose another name"
            )
        self._entries[name] = factory

    def get(self, name: str) -> T:
        """Returns the factory registered under ``name``.

        Raises:
            ConfigError: no such name; the message lists close matches and all known names.
        """
        self._load_entry_points()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def create(self, name: str, **params: Any) -> Any:
        """Builds the plugin ``name`` with keyword parameters ``params``.

        Unknown parameter names are refused with a message listing the accepted ones (when the
        factory's signature can be inspected).

        Raises:
            ConfigError: unknown plugin name or unknown parameter.
        """
        factory = self.get(name)
        if not callable(factory):
            raise ConfigError(f"{self.kind}: {name!r} is registered but is not callable")
        _check_parameters(self.kind, name, factory, params)
        return factory(**params)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching the shell-style wildcard ``pattern`` (fnmatch)."""
        self._load_entry_points()
        return sorted(name for name in self._entries if fnmatch.fnmatchcase(name, pattern))

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load_entry_points()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={sorted(self._entries)})"

    def _unknown(self, name: object) -> ConfigError:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name).lower(), known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if known else "(none)"
        return ConfigError(f"unknown {self.kind} name {name!r}.{hint} Known {self.kind}: {listing}")

    def _load_entry_points(self) -> None:
        """Loads the ``alframe.<kind>`` entry points once; a broken plugin only warns."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        try:
            entry_points = importlib.metadata.entry_points(group=self.entry_point_group)
        except Exception as error:  # a corrupt installed distribution must not break built-ins
            warnings.warn(
                f"could not list entry points {self.entry_point_group!r}: {error}",
                PluginLoadWarning,
                stacklevel=3,
            )
            return
        for entry_point in entry_points:
            if entry_point.name in self._entries:
                warnings.warn(
                    f"{self.kind} plugin {entry_point.name!r} from entry point "
                    f"{entry_point.value!r} is ignored: the name is already registered by "
                    f"{_describe(self._entries[entry_point.name])}",
                    PluginLoadWarning,
                    stacklevel=3,
                )
                continue
            try:
                loaded = entry_point.load()
            except Exception as error:
                warnings.warn(
                    f"{self.kind} plugin {entry_point.name!r} ({entry_point.value!r}) failed to "
                    f"load and is skipped: {type(error).__name__}: {error}",
                    PluginLoadWarning,
                    stacklevel=3,
                )
                continue
            # A plugin module may register itself on import; otherwise register what it exports.
            if entry_point.name not in self._entries:
                self._entries[entry_point.name] = loaded


def _describe(factory: object) -> str:
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{module}.{qualname}" if module else str(qualname)


def _check_parameters(kind: str, name: str, factory: Any, params: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    parameters = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    accepted = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{kind} {name!r} got unknown parameter(s) {', '.join(hints)}; "
            f"accepted: {', '.join(accepted) if accepted else '(none)'}"
        )
