"""Generate the recipe reference (docs/recipes.md) from the pydantic schema.

Run ``python -m alframe.config.reference > docs/recipes.md``; a test fails when the file is stale,
so the reference can never drift from the code.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from alframe.config.schema import Recipe

# Docstrings name documentation pages from the repository root (``docs/methods/xssr.md``); the
# reference itself lives in docs/, so those become links relative to it.
_DOCS_PAGE = re.compile(r"(?<![\w./`])docs/([\w./-]+\.md)")


def _link_docs_pages(text: str) -> str:
    return _DOCS_PAGE.sub(lambda m: f"[{m.group(1)}]({m.group(1)})", text)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        # One spelling for every union: str() writes Union[...] as soon as a member (such as a
        # Literal) is not a class.
        return " or ".join(_type_name(arg) for arg in typing.get_args(annotation))
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    if text is None:
        text = str(annotation)
    return (
        text.replace("typing.", "")
        .replace("alframe.config.schema.", "")
        .replace("NoneType", "None")
        .replace("|", "or")
    )


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return ""
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump() for v in value]
    return f"`{json.dumps(value, default=str)}`"


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            found.append(item)
        stack.extend(getattr(item, "__args__", ()))
    return found


def _section(model: type[BaseModel], path: str, seen: set[str], lines: list[str]) -> None:
    lines.append(f"## `{path}`" if path else "## top level")
    lines.append("")
    doc = (model.__doc__ or "").strip()
    if doc:
        lines.extend([_link_docs_pages(" ".join(doc.split())), ""])
    lines.append("| key | type | default | meaning |")
    lines.append("|---|---|---|---|")
    children: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        desc = _link_docs_pages((field.description or "").replace("|", "\\|"))
        lines.append(
            f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {desc} |".replace(
                "||", "| |"
            )
        )
        for nested in _nested_models(field.annotation):
            key = f"{path}.{name}" if path else name
            is_mapping = getattr(field.annotation, "__origin__", None) is dict
            child_path = f"{key}.<name>" if is_mapping else key
            if nested.__name__ not in seen:
                seen.add(nested.__name__)
                children.append((child_path, nested))
    lines.append("")
    for child_path, nested in children:
        _section(nested, child_path, seen, lines)


def recipe_reference() -> str:
    """The whole recipe reference as Markdown."""
    lines = [
        "# Recipe reference",
        "",
        "Generated from `alframe/config/schema.py` by `python -m alframe.config.reference`; do not",
        "edit by hand. Every key can be overridden on the command line with `--set a.b=value`",
        "(values are parsed as YAML). Unknown keys are errors. Paths in `data` are relative to",
        "`data.root`, where `${ALFRAME_DATA}` and `~` are expanded.",
        "",
    ]
    _section(Recipe, "", {"Recipe"}, lines)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(recipe_reference())
