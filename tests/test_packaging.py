"""The README, CI, pyproject and constraints stay in step."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

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


# Every path `alframe demo` and the commands of docs/quickstart.md and the README create when run
# from the repository root (folders are given by a file inside them).
GENERATED_PATHS = [
    # alframe demo (default --out alframe_demo) and its MLflow store in the working directory
    "alframe_demo/data/source/images/source_000.png",
    "alframe_demo/run/summary.md",
    "alframe_demo/run/mae/mae.ckpt",
    "alframe_demo/run/embeddings/pool.npz",
    "mlflow.db",
    "mlflow.db-journal",
    "mlartifacts/1/abc/artifacts/learning_curve.png",
    "mlruns/0/meta.yaml",
    "lightning_logs/version_0/hparams.yaml",
    # quickstart: train / evaluate, select (CSV and its pictures), experiments
    "runs/quick/checkpoints/best.ckpt",
    "runs/xssr_cxr_budget/experiment.json",
    "selection.csv",
    "selection_pool.png",
    "selection_picked.png",
    "coreset.csv",
    "coreset_pool.png",
    "coreset_picked.png",
    # quickstart: a labelling project and the annotators' masks, nnU-Net export
    "proj/state.db",
    "proj/rounds/001/export/manifest.csv",
    "myproj/runs/mae/mae.ckpt",
    "runs/exp/learning_curve.png",
    "alframe_demo/mlflow.db",
    "masks_alice/target__target_043.png",
    "masks_bob/target__target_017.png",
    "nnunet_raw/Dataset501_x/dataset.json",
    # quickstart / README: pseudo-labels, adaptation zoo, ranking (default and named output)
    "pl/pseudolabel.json",
    "zoo/epoch_001.ckpt",
    "rank_out/ranking.csv",
    "alframe_rank/ranking.csv",
]


def test_gitignore_covers_what_the_demo_and_quickstart_write() -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *GENERATED_PATHS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    # --non-matching prints "::\t<path>" for a path no pattern ignores.
    missed = [line.split("\t", 1)[1] for line in done.stdout.splitlines() if line.startswith("::")]
    assert not missed, f".gitignore does not cover: {missed}"


def test_readme_says_what_the_cpu_extra_contains_and_why_the_install_is_large() -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("**Why the install is large")
    paragraph = readme[start : readme.index("## Use", start)]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for requirement in extras["cpu"]:
        name = re.split(r"[=<>!~\[; ]", requirement, maxsplit=1)[0]
        assert f"`{name}`" in paragraph, f"the README does not say the cpu extra holds {name}"
    assert "nvidia" in paragraph and "GB" in paragraph
    # The CPU-only PyTorch route keeps the pinned install command (constraints, the cpu extra).
    assert re.search(
        r'pip install -c constraints\.txt -e "\.\[cpu\]" --extra-index-url '
        r"https://download\.pytorch\.org/whl/cpu",
        paragraph,
    )
