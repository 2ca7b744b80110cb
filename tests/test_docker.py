"""The Dockerfiles stay in step with pyproject.toml, constraints.txt and the CLI.

There is no Docker engine on the development machines, so the images are checked statically:
base Python version, the install command (same constraints file, extras that exist), the offline
environment, a non-root user, the smoke command and the build context (.dockerignore).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile", "gpu": REPO / "docker" / "Dockerfile.cuda"}
FAISS_OF_EXTRA = {"cpu": "faiss-cpu", "gpu": "faiss-gpu"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    argument: str


def instructions(path: Path) -> list[Instruction]:
    """Dockerfile instructions with line continuations joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, argument = full.partition(" ")
        result.append(Instruction(keyword.upper(), argument.strip()))
    assert not pending, f"{path}: unterminated line continuation"
    return result


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def of(path: Path, keyword: str) -> list[str]:
    return [i.argument for i in instructions(path) if i.keyword == keyword]


def pip_installs(path: Path) -> list[list[str]]:
    """The argument lists of every ``pip install`` in the file's RUN instructions."""
    commands = []
    for run in of(path, "RUN"):
        for part in re.split(r"&&|;", run):
            words = shlex.split(part)
            if len(words) >= 2 and words[0] in ("pip", "pip3") and words[1] == "install":
                commands.append(words[2:])
            elif words[:4] in (
                ["python", "-m", "pip", "install"],
                ["python3", "-m", "pip", "install"],
            ):
                commands.append(words[4:])
    return commands


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_dockerfile_exists_and_has_one_stage(extra: str) -> None:
    path = DOCKERFILES[extra]
    assert path.is_file(), path
    assert len(of(path, "FROM")) == 1


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_base_python_matches_requires_python(extra: str) -> None:
    (base,) = of(DOCKERFILES[extra], "FROM")
    match = re.fullmatch(
        r"(?:docker\.io/library/)?python:(\d+)\.(\d+)\.(\d+)-[\w.-]+(@sha256:[0-9a-f]{64})?", base
    )
    assert match, f"{base!r}: use an official python image with a full version tag"
    version = ".".join(match.groups()[:3])
    assert version in SpecifierSet(project()["requires-python"]), (
        version,
        project()["requires-python"],
    )
    # The version the stack is tested on (mypy / ruff target it); classifiers, when present, list it.
    mypy_version = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mypy"][
        "python_version"
    ]
    assert version.startswith(mypy_version + "."), (version, mypy_version)
    classifiers = project().get("classifiers", [])
    listed = [
        c.rsplit("::", 1)[1].strip()
        for c in classifiers
        if c.startswith("Programming Language :: Python :: 3.")
    ]
    if listed:
        assert mypy_version in listed, listed


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_installs_the_project_with_the_constraints_file_and_an_existing_extra(extra: str) -> None:
    path = DOCKERFILES[extra]
    installs = pip_installs(path)
    assert len(installs) == 1, f"{path}: exactly one pip install (the project), got {installs}"
    (args,) = installs
    assert "-c" in args and args[args.index("-c") + 1] == "constraints.txt", args
    targets = [a for a in args if a.startswith(".")]
    assert targets == [f".[{extra}]"], args
    assert not any(a.startswith(("-e", "--editable")) for a in args), (
        "install the package, not a link"
    )
    extras = project()["optional-dependencies"]
    assert extra in extras
    assert any(dep.startswith(FAISS_OF_EXTRA[extra] + "==") for dep in extras[extra])
    other = FAISS_OF_EXTRA["gpu" if extra == "cpu" else "cpu"]
    assert not any(dep.startswith(other) for dep in extras[extra]), "install exactly one faiss"
    # Everything pip reads must be in the image before it runs.
    copied = " ".join(of(path, "COPY"))
    for needed in ("pyproject.toml", "constraints.txt", "README.md", "alframe"):
        assert needed in copied, f"{path}: {needed} is not copied before pip install"


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_torch_wheel_index_agrees_with_constraints(extra: str) -> None:
    """constraints.txt pins PyPI's torch build (CUDA 13, nvidia-*-cu13 wheels): no other index."""
    path = DOCKERFILES[extra]
    pins = constraints()
    assert pins["torch"] == next(
        d.split("==")[1] for d in project()["dependencies"] if d.startswith("torch==")
    )
    cuda_major = pins["nvidia-cuda-runtime"].split(".")[0]
    assert pins["cuda-toolkit"].split(".")[0] == cuda_major
    text = path.read_text()
    for index in re.findall(r"download\.pytorch\.org/whl/(\w+)", text):
        # A PyTorch index would replace the pinned build: only one for the same CUDA major fits.
        assert extra == "gpu" and index.startswith(f"cu{cuda_major}"), (
            f"{path}: torch index {index!r} disagrees with constraints.txt (CUDA {cuda_major})"
        )
    for args in pip_installs(path):
        assert not {"--index-url", "-i", "--extra-index-url"} & set(args), args
    if extra == "gpu":
        # The image's notes name the CUDA version the pinned torch build needs from the driver.
        assert f"CUDA {cuda_major}." in text, f"{path}: say which CUDA the torch build needs"


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_offline_environment(extra: str) -> None:
    env: dict[str, str] = {}
    for argument in of(DOCKERFILES[extra], "ENV"):
        for word in shlex.split(argument):
            key, _, value = word.partition("=")
            env[key] = value
    assert env.get("HF_HUB_OFFLINE") == "1"
    assert env.get("NO_ALBUMENTATIONS_UPDATE") == "1"
    if extra == "gpu":
        assert "compute" in env.get("NVIDIA_DRIVER_CAPABILITIES", "")


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_runs_as_a_created_non_root_user(extra: str) -> None:
    path = DOCKERFILES[extra]
    steps = instructions(path)
    users = [i for i in steps if i.keyword == "USER"]
    assert users, f"{path}: no USER (the container would run as root)"
    user = users[-1].argument.split(":")[0]
    assert user not in ("root", "0"), user
    runs = " ".join(of(path, "RUN"))
    assert (
        re.search(rf"useradd\b.*(--uid {user}\b|\b{user}\s*$)", runs) or f"--uid {user}" in runs
    ), f"{path}: USER {user} is never created"
    keywords = [i.keyword for i in steps]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert keywords.index("ENTRYPOINT") > last_user and keywords.index("CMD") > last_user


@pytest.mark.parametrize("extra", sorted(DOCKERFILES))
def test_smoke_command_is_alframe_help(extra: str) -> None:
    path = DOCKERFILES[extra]
    steps = instructions(path)
    install_at = next(
        n for n, i in enumerate(steps) if i.keyword == "RUN" and "pip install" in i.argument
    )
    smoke = [
        n for n, i in enumerate(steps) if i.keyword == "RUN" and i.argument == "alframe --help"
    ]
    assert smoke and smoke[-1] > install_at, f"{path}: RUN alframe --help after the install"
    entrypoint = json.loads(of(path, "ENTRYPOINT")[-1])
    cmd = json.loads(of(path, "CMD")[-1])
    assert entrypoint + cmd == ["alframe", "--help"]


def test_entry_point_exists_and_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert project()["scripts"]["alframe"] == "alframe.cli.main:main"
    from alframe.cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    assert "usage: alframe" in capsys.readouterr().out


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything below."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.removeprefix("!").rstrip("/")
        if body.startswith("**/"):  # at any depth: match a component, or a path ending there
            body = body[3:]
            hit = any(fnmatch.fnmatchcase(part, body) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_images_copy_and_drops_the_rest() -> None:
    for path in DOCKERFILES.values():
        for argument in of(path, "COPY"):
            sources = shlex.split(argument)[:-1]
            for source in (s for s in sources if not s.startswith("--")):
                assert not dockerignored(source), (
                    f"{path}: COPY {source} is excluded by .dockerignore"
                )
    for kept in (
        "alframe/cli/main.py",
        "recipes/cxr_montgomery_to_shenzhen.yaml",
        "constraints.txt",
    ):
        assert not dockerignored(kept), kept
    for dropped in (
        ".git/config",
        "runs/x/best.ckpt",
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "alframe/__pycache__/x.cpython-311.pyc",
        "tests/test_docker.py",
    ):
        assert dockerignored(dropped), dropped
