"""Load a recipe from YAML, apply ``--set a.b=value`` overrides and validate it.

Errors name the key, the offending value and what is expected, e.g.::

    recipe recipes/x.yaml: train.lr = 'fast': expected a number (Input should be a valid number)
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from alframe.config.schema import Recipe
from alframe.errors import ConfigError

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value.

    Args:
        text: one ``--set`` argument.

    Returns:
        The dotted key split into parts, and the value parsed as YAML (so ``3`` is an int,
        ``[1, 2]`` a list, ``null`` None and anything else a string).
    """
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.max_epochs=5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key is empty; write e.g. --set train.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _schema_keys(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _nested_model(annotation: Any) -> tuple[bool, type[BaseModel] | None]:
    """(is a free-form mapping, model of the values or of the field itself) for an annotation."""
    origin = getattr(annotation, "__origin__", None)
    args: tuple[Any, ...] = tuple(getattr(annotation, "__args__", ()))
    if origin is dict:
        value = args[-1] if args else None
        is_model = isinstance(value, type) and issubclass(value, BaseModel)
        return True, value if is_model else None
    for cand in args or (annotation,):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return False, cand
        if getattr(cand, "__origin__", None) is dict:
            return _nested_model(cand)
    return False, None


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with every ``KEY=VALUE`` override applied.

    Unknown keys of fixed sections are refused with the closest valid names; keys under free-form
    mappings (``data.datasets``, ``data.evaluate``, ``model.extra``) may be created.
    """
    result = _deep_copy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node: dict[str, Any] = result
        model: type[BaseModel] | None = Recipe
        free_form = False  # inside a dict[str, X] field the next key is a user-chosen name
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if not free_form and model is not None and part not in model.model_fields:
                close = difflib.get_close_matches(part, _schema_keys(model), n=3)
                where = ".".join(parts[:depth]) or "the recipe"
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"--set {text!r}: '{part}' is not a key of {where} "
                    f"(valid: {', '.join(_schema_keys(model))}){hint}"
                )
            if last:
                node[part] = value
                break
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
            if free_form:
                free_form = False  # `part` named an entry; its value has the mapping's value model
            elif model is not None:
                free_form, model = _nested_model(model.model_fields[part].annotation)
    return result


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _format_validation_error(source: str, err: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for item in err.errors():
        loc = [str(p) for p in item["loc"] if not str(p).startswith("function-")]
        key = ".".join(loc) or "(top level)"
        value = _lookup(raw, loc)
        shown = f" = {value!r}" if value is not _MISSING else ""
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against docs/recipes.md"
        elif item["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{key}{shown}: {msg}")
    head = f"recipe {source}: "
    if len(lines) == 1:
        return head + lines[0]
    return head + f"{len(lines)} problems: " + "; ".join(lines)


_MISSING = object()


def _lookup(raw: Any, loc: list[str]) -> Any:
    node = raw
    for part in loc:
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def recipe_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Recipe:
    """Validate an already-parsed recipe mapping.

    Raises:
        ConfigError: naming every invalid key, its value and what was expected.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {source}: expected a mapping of keys at the top level")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(source, err, raw)) from None


def load_recipe(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file.

    A recipe inside a labelling project (``project.json`` beside it), or the project folder
    itself, is resolved as the project sees it: paths relative to the project folder and the
    MLflow store in it (:func:`project_recipe_paths`).

    Args:
        path: YAML recipe file, or a labelling project folder.
        overrides: ``KEY=VALUE`` strings applied in order before validation.

    Returns:
        The validated :class:`Recipe`.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not match the schema.
    """
    file = Path(path)
    if file.is_dir() and (file / PROJECT_MARKER).is_file():
        file = file / "recipe.yaml"  # a labelling project stands for its recipe
    if not file.is_file():
        raise ConfigError(
            f"recipe {file}: no such file; pass an existing YAML file (see recipes/ for examples)"
        )
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"recipe {file}: not valid YAML{where}; fix the syntax there") from None
    if raw is None:
        raise ConfigError(f"recipe {file}: the file is empty; start from a file in recipes/")
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {file}: expected a mapping of keys at the top level")
    project = project_folder_of(file)
    if project is not None:
        # A labelling project's recipe: its paths are relative to the project, wherever the
        # command runs from, and its MLflow store lives there too (see project_recipe_paths).
        project_recipe_paths(raw, project)
    raw = apply_overrides(raw, overrides)
    return recipe_from_dict(raw, str(file))


PROJECT_MARKER = "project.json"
"""The file that makes a folder a labelling project (``alframe.annotate.project``)."""

RECIPE_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("data", "root"),
    ("output_dir",),
    ("model", "weights"),
    ("model", "encoder_weights"),
    ("embed", "weights"),
    ("embed", "cache_dir"),
)
"""Recipe keys that hold file-system paths (``embed.ensemble`` entries are handled too)."""


def project_folder_of(recipe_file: Path) -> Path | None:
    """The labelling project a recipe file belongs to (``project.json`` beside it), else None."""
    return recipe_file.parent if (recipe_file.parent / PROJECT_MARKER).is_file() else None


def _rebase_one(value: Any, raw: dict[str, Any], key: tuple[str, ...], **where: Path | None) -> Any:
    if not isinstance(value, str) or "${" in value:
        return value  # ${ALFRAME_DATA}/... stays portable as it is
    if key == ("output_dir",):
        value = value.replace("{name}", str(raw.get("name", "")))
    path = Path(os.path.expanduser(value))
    to_relative, to_absolute = where.get("to_relative"), where.get("to_absolute")
    if to_relative is not None:
        absolute = path if path.is_absolute() else Path.cwd() / path
        try:
            return os.path.relpath(os.path.normpath(absolute), to_relative)
        except ValueError:  # another drive (Windows): keep it absolute
            return str(absolute)
    if to_absolute is not None and not path.is_absolute():
        return os.path.normpath(to_absolute / path)
    return value


def rebase_recipe_paths(
    raw: dict[str, Any], to_absolute: Path | None = None, to_relative: Path | None = None
) -> None:
    """Rewrite a raw recipe's path keys in place (:data:`RECIPE_PATH_KEYS`, ``embed.ensemble``).

    Args:
        raw: the recipe mapping.
        to_absolute: make relative paths absolute against this folder.
        to_relative: make paths (relative ones taken from the working directory) relative to
            this folder.
    """
    where = {"to_absolute": to_absolute, "to_relative": to_relative}
    for key in RECIPE_PATH_KEYS:
        node: Any = raw
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            node[key[-1]] = _rebase_one(node[key[-1]], raw, key, **where)
    embed = raw.get("embed")
    if isinstance(embed, dict) and isinstance(embed.get("ensemble"), list):
        embed["ensemble"] = [_rebase_one(v, raw, ("embed",), **where) for v in embed["ensemble"]]


def project_recipe_paths(raw: dict[str, Any], project: Path) -> None:
    """Resolve a project recipe in place: paths against the project folder, and an unset
    ``tracking.uri`` to the project's own ``mlflow.db`` (unless ``$MLFLOW_TRACKING_URI`` is set).
    """
    root = project.resolve()
    rebase_recipe_paths(raw, to_absolute=root)
    tracking = raw.setdefault("tracking", {})
    if (
        isinstance(tracking, dict)
        and not tracking.get("uri")
        and not os.environ.get("MLFLOW_TRACKING_URI")
    ):
        tracking["uri"] = f"sqlite:///{root / 'mlflow.db'}"


def expand_path(text: str, base: Path | None = None) -> Path:
    """Expand ``${VAR}`` and ``~`` in a recipe path, relative to ``base`` when not absolute.

    Raises:
        ConfigError: a referenced environment variable is not set.
    """

    def _sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            hint = (
                " (the folder that contains cxr_lungs/, e.g. export ALFRAME_DATA=../shared/data)"
                if name == "ALFRAME_DATA"
                else ""
            )
            raise ConfigError(f"path {text!r} uses ${{{name}}} but it is not set; set it{hint}")
        return os.environ[name]

    path = Path(os.path.expanduser(_ENV_PATTERN.sub(_sub, text)))
    if base is not None and not path.is_absolute():
        path = base / path
    return path


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain YAML-serialisable data (tuples become lists)."""
    return _jsonable(recipe.model_dump(mode="json"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML text."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
