"""The documentation stays true: its command lines parse, its links resolve, its example runs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from alframe.cli.main import build_parser
from alframe.config.schema import Recipe

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted((REPO / "docs").glob("*.md"))
METHOD_NOTES = sorted((REPO / "docs" / "methods").glob("*.md"))
PAGES = [*DOCS, *METHOD_NOTES, REPO / "README.md"]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_FENCE = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
PLACEHOLDERS = {"...", "COMMAND"}
IMAGE_NAMES = re.compile(r"^alframe:[\w.-]+$")  # `docker run ... alframe:cpu train ...`


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def code_lines(text: str) -> list[str]:
    """Lines of the shell code blocks, with backslash continuations joined."""
    lines: list[str] = []
    for block in SHELL_FENCE.findall(text):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            lines.append(pending + line)
            pending = ""
    return lines


def alframe_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after `alframe`) for every alframe command line in the docs' code blocks."""
    found = []
    for page in PAGES:
        for line in code_lines(page.read_text()):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            for n, word in enumerate(words):
                if word == "alframe" or (
                    IMAGE_NAMES.match(word) and words[:2] == ["docker", "run"]
                ):
                    argv = words[n + 1 :]
                    if not PLACEHOLDERS & set(argv):
                        found.append((f"{rel(page)}: {line.strip()}", argv))
                    break
    return found


COMMANDS = alframe_commands()


def test_the_docs_have_commands_to_check() -> None:
    pages = {where.split(":")[0] for where, _ in COMMANDS}
    assert {"docs/quickstart.md", "docs/scaling.md", "README.md"} <= pages
    assert len(COMMANDS) > 30


def recipe_key_exists(key: str) -> bool:
    """Whether a dotted --set key names a recipe field (free-form mappings accept any sub-key)."""
    model: typing.Any = Recipe
    for part in key.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return True  # inside a dict such as select.params or model.extra
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        models = [
            a
            for a in typing.get_args(annotation)
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        model = models[0] if models else annotation
    return True


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_command_line_parses(
    where: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        message = capsys.readouterr().err
        assert stop.code == 0, f"{where}\n{message}"  # --help exits with 0
        return
    assert getattr(args, "handler", None) is not None, f"{where}: no sub-command"
    for override in getattr(args, "overrides", None) or []:
        key = override.split("=", 1)[0]
        assert recipe_key_exists(key), f"{where}: --set {key} is not a recipe key"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces → hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m) for m in re.findall(r"^#+\s+(.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_resolve(page: Path) -> None:
    text = FENCE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists() or (
            fragment and destination.suffix == ".md" and fragment not in anchors(destination)
        ):
            broken.append(target)
    assert not broken, f"{rel(page)}: broken links {broken}"


def test_docs_link_every_page_and_benchmark() -> None:
    index = (REPO / "docs" / "index.md").read_text()
    for page in DOCS:
        if page.name != "index.md":
            assert f"({page.name})" in index, f"docs/index.md does not link {page.name}"
    for bench in sorted((REPO / "docs" / "benchmarks").glob("*.md")):
        assert f"(benchmarks/{bench.name})" in index, f"docs/index.md does not link {bench.name}"
    assert "(docs/index.md)" in (REPO / "README.md").read_text()
    assert "(methods/index.md)" in index, "docs/index.md does not link methods/index.md"
    methods_index = (REPO / "docs" / "methods" / "index.md").read_text()
    for note in METHOD_NOTES:
        if note.name != "index.md":
            assert f"({note.name})" in methods_index, f"methods/index.md does not link {note.name}"


# A method note named anywhere: `methods/xssr.md`, `docs/methods/xssr.md`, `../methods/xssr.md` …
METHOD_MENTION = re.compile(r"[\w./-]*methods/[\w.-]+\.md")
METHOD_NOTES_EXPECTED = {"xssr.md", "rpg.md", "cte.md", "lpfu.md"}


def method_mentions() -> list[tuple[Path, str]]:
    """(file, path as written) for every mention of a method note in code and docs."""
    files = [
        *sorted((REPO / "alframe").rglob("*.py")),
        *sorted((REPO / "docs").rglob("*.md")),
        REPO / "README.md",
    ]
    return [(f, m) for f in files for m in METHOD_MENTION.findall(f.read_text(encoding="utf-8"))]


def test_the_method_notes_exist() -> None:
    present = {note.name for note in METHOD_NOTES}
    assert present >= METHOD_NOTES_EXPECTED, (
        f"missing docs/methods/: {METHOD_NOTES_EXPECTED - present}"
    )


def test_every_mention_of_a_method_note_resolves_in_the_repository() -> None:
    """Code names a note as ``docs/methods/NAME.md`` (from the repository root); a markdown page
    names it by a path relative to the page. Either way the file must exist in docs/methods/,
    and no path may point outside the repository."""
    mentions = method_mentions()
    assert len(mentions) > 10, "the mention pattern found (almost) nothing; is it still right?"
    notes = (REPO / "docs" / "methods").resolve()
    broken = []
    for file, written in mentions:
        base = file.parent if file.suffix == ".md" else REPO
        target = (base / written).resolve()
        if written.startswith("/") or target.parent != notes or not target.is_file():
            broken.append(f"{rel(file)}: {written}")
    assert not broken, "method notes that do not resolve to docs/methods/<name>.md: " + "; ".join(
        sorted(set(broken))
    )


def example_block(text: str, first_line: str) -> str:
    blocks = [b for b in FENCE.findall(text) if b.startswith(first_line)]
    assert len(blocks) == 1, f"plugins.md: expected one block starting {first_line!r}"
    return blocks[0]


def test_plugin_example_runs_and_its_entry_point_is_right(tmp_path: Path) -> None:
    text = (REPO / "docs" / "plugins.md").read_text()
    package = tmp_path / "my_alframe_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "strategies.py").write_text(example_block(text, "# my_alframe_plugin/strategies.py"))
    (tmp_path / "tests").mkdir()
    test_file = tmp_path / "tests" / "test_far_from_labelled.py"
    test_file.write_text(example_block(text, "# tests/test_far_from_labelled.py"))
    toml = tomllib.loads(example_block(text, "# pyproject.toml"))
    ((name, target),) = toml["project"]["entry-points"]["alframe.strategies"].items()
    assert target == "my_alframe_plugin.strategies:FarFromLabelledStrategy"

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout, done.stdout

    # The class the entry point names satisfies the registry's expectations.
    sys.path.insert(0, str(tmp_path))
    try:
        from my_alframe_plugin.strategies import FarFromLabelledStrategy  # type: ignore[import-not-found]

        from alframe.registry import Registry
        from alframe.strategies import Strategy

        assert FarFromLabelledStrategy.name == name
        registry: Registry[type[Strategy]] = Registry("strategies")
        registry.add(name, FarFromLabelledStrategy)
        assert isinstance(registry.create(name, jitter=0.0), Strategy)
    finally:
        sys.path.remove(str(tmp_path))
        for module in [m for m in sys.modules if m.startswith("my_alframe_plugin")]:
            del sys.modules[module]
