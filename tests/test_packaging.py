"""The README, CI, pyproject and constraints stay in step."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(pip install[^\n]*)\n```", text)


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2, commands
    demo, tests = commands
    assert demo.endswith("alframe demo")
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()
    assert "ALFRAME_DATA" in ci


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_pinned_dependencies_agree_with_constraints() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        deps += extra
    pins = constraints()
    for dep in deps:
        if "==" not in dep:
            continue
        name, version = dep.split("==")
        name = name.strip().lower().replace("_", "-")
        if name == "faiss-gpu":  # GPU extra: not in the CPU freeze
            continue
        assert pins.get(name) == version, (
            f"{name}: pyproject {version}, constraints {pins.get(name)}"
        )


def test_console_script_and_typed_marker() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["alframe"] == "alframe.cli.main:main"
    assert (REPO / "alframe" / "py.typed").exists()
