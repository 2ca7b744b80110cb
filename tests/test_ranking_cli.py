"""``alframe rank`` and ``alframe adapt`` end to end on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from alframe.cli.main import main

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from alframe.adapt import save_task_checkpoint
    from alframe.config import recipe_from_dict
    from alframe.data import synthetic_recipe_dict, write_synthetic_dataset
    from alframe.models import SegmentationTask

    root = tmp_path_factory.mktemp("rank_cli")
    write_synthetic_dataset(root / "data", n_images=6, image_size=32, seed=0)
    raw = synthetic_recipe_dict(root / "data", image_size=32)
    raw["model"]["extra"] = {"decoder_channels": [16, 8, 8]}
    recipe = recipe_from_dict(raw)
    paths: dict[str, Path] = {"root": root, "data": root / "data"}
    state = torch.random.get_rng_state()
    try:
        for seed in (0, 1):
            torch.manual_seed(seed)  # restored below
            task = SegmentationTask.from_recipe(recipe, load_weights=False)
            paths[f"ckpt{seed}"] = save_task_checkpoint(task, root / f"model{seed}.ckpt", 0)
    finally:
        torch.random.set_rng_state(state)
    traced = torch.jit.trace(task.model.eval(), torch.zeros(1, 1, 32, 32))
    paths["script"] = root / "scripted.pt"
    traced.save(str(paths["script"]))
    return paths


def test_rank_end_to_end_with_labels(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = setup["data"] / "target"
    out = tmp_path / "out"
    code = main(
        [
            "rank",
            "--checkpoints",
            str(setup["ckpt0"]),
            str(setup["ckpt1"]),
            str(setup["script"]),
            "--images",
            str(target / "images"),
            "--labels",
            str(target / "masks"),
            "--method",
            "cte-ei",
            "--method",
            "entropy",
            "--method",
            "transfer-score",
            "--batch-size",
            "4",
            "--out",
            str(out),
            "--no-track",
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "sorted by cte-ei[gauss]" in printed
    assert "skipped transfer-score for scripted" in printed
    assert "spearman" in printed and "true_dice" in printed
    payload = json.loads((out / "ranking.json").read_text())
    assert len(payload["rankers"]["cte-ei[gauss]"]["ranking"]) == 3
    assert set(payload["true_dice"]) == {"model0", "model1", "scripted"}
    for name in ("ranking.csv", "per_image.csv", "correlations.csv", "scatter.png"):
        assert (out / name).is_file(), name


def test_rank_on_several_devices_gives_the_one_device_scores(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    # "cpu,cpu": two processes (ddp_spawn), one candidate each; the TorchScript model is read
    # again from its file in its process. Equality needs equal intra-op threads (see
    # test_inference.py); true Dice across processes is checked there too.
    from lightning.fabric.utilities.distributed import _suggested_max_num_threads

    target = setup["data"] / "target"
    scores = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(_suggested_max_num_threads(2))
    try:
        for devices in ("cpu", "cpu,cpu"):
            out = tmp_path / devices.replace(",", "_")
            args = ["rank", "-c", str(setup["ckpt0"]), str(setup["script"]), "-i", str(target)]
            args += ["-m", "cte-ei", "-m", "im", "-p", "gauss"]
            args += ["--batch-size", "3", "--devices", devices, "--out", str(out)]
            assert main([*args, "--no-track", "--no-progress"]) == 0
            scores[devices] = json.loads((out / "ranking.json").read_text())["rankers"]
    finally:
        torch.set_num_threads(threads)
    for ranker, by_devices in scores["cpu"].items():
        split = {r["model"]: r["score"] for r in scores["cpu,cpu"][ranker]["ranking"]}
        assert split == {r["model"]: r["score"] for r in by_devices["ranking"]}, ranker


def test_rank_logs_to_the_tracker(
    setup: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    import alframe.tracking

    logged: dict[str, Any] = {"metrics": {}, "artifacts": []}

    class FakeTracker:
        def __init__(self, experiment: str) -> None:
            logged["experiment"] = experiment

        @contextlib.contextmanager
        def run(self, name: str) -> Any:
            yield "run-1"

        def log_params(self, run_id: str, params: dict[str, Any]) -> None:
            logged["params"] = params

        def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
            logged["metrics"].update(metrics)

        def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
            logged.setdefault("tags", {}).update(tags)

        def log_artifact(self, run_id: str, path: Path) -> None:
            logged["artifacts"].append(Path(path).name)

        def ui_command(self) -> str:
            return "mlflow ui"

    monkeypatch.setattr(alframe.tracking, "Tracker", FakeTracker)
    constant = torch.jit.script(_AllForeground())
    constant.save(str(tmp_path / "constant.pt"))
    code = main(
        [
            "rank",
            "-c",
            str(setup["ckpt0"]),
            str(tmp_path / "constant.pt"),
            "-i",
            str(setup["data"] / "target"),
            "-m",
            "im",
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert code == 0
    assert logged["experiment"] == "alframe-rank"
    assert "im/model0" in logged["metrics"]
    assert logged["metrics"]["degenerate/model0"] == 0.0
    assert logged["metrics"]["degenerate/constant"] == 1.0
    assert logged["tags"]["degenerate.constant"].startswith("all foreground")
    assert "degenerate.model0" not in logged["tags"]
    assert logged["params"]["primary_ranker"] == "im"
    assert logged["params"]["perturbation_scale"] == "relative"
    assert "ranking.json" in logged["artifacts"]


class _AllForeground(torch.nn.Module):
    """A black-box model that predicts foreground everywhere, whatever the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], 5.0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "cte-e"], "Did you mean 'cte-ei'"),
        (["--method", "source-dice"], "--source"),
        (["--method", "cte-ei", "--perturbation", "blur"], "unknown perturbation"),
        (["--method", "cte-ars"], "--instances"),
        (["--images", "/nonexistent/folder"], "no such folder"),
        (["--checkpoints", "/nonexistent/m.ckpt"], "does not exist"),
        (["--checkpoints", "ONNX"], "onnxruntime"),
        (["--checkpoints", "TEXT"], "unknown model file type"),
        (["--batch-size", "0"], "--batch-size"),
        (["--devices", "tpu"], "unknown device 'tpu'"),
        (["--devices", "cuda:99"], "requested but torch sees"),
    ],
)
def test_rank_user_errors_exit_2(
    setup: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really onnx")
    text = tmp_path / "model.txt"
    text.write_text("hello")
    extra = [str(onnx) if e == "ONNX" else str(text) if e == "TEXT" else e for e in extra]
    args = ["rank", "-c", str(setup["ckpt0"]), "-i", str(setup["data"] / "target")]
    args += ["--out", str(tmp_path / "o"), "--no-track", "--no-progress", *extra]
    code = main(args)
    error = capsys.readouterr().err
    assert code == 2
    assert message in error
    assert len(error.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "ranking.json").exists()


def _rank(setup: dict[str, Path], out: Path, *extra: str, models: tuple[str, ...]) -> int:
    """``alframe rank`` on the fixture's target images, untracked and quiet."""
    args = ["rank", "-c", *(str(setup[m]) for m in models), "-i", str(setup["data"] / "target")]
    args += ["--out", str(out), "--no-track", "--no-progress", "--batch-size", "4"]
    return main([*args, *extra])


def test_rank_help_lists_every_ranker(capsys: pytest.CaptureFixture[str]) -> None:
    from alframe.ranking import DEFAULT_RANKER, RANKERS

    with pytest.raises(SystemExit) as exit_info:
        main(["rank", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    epilog = printed[printed.index("rankers (--method NAME):") :]
    for name in RANKERS.names():
        summary = (RANKERS.get(name).__doc__ or "").strip().splitlines()[0].rstrip(".")
        line = next(line for line in epilog.splitlines() if line.split()[:1] == [name])
        assert summary in line, name
    default_line = next(line for line in epilog.splitlines() if line.split()[:1] == ["consensus"])
    assert DEFAULT_RANKER == "consensus" and "[default" in default_line
    assert "--instances" in next(line for line in epilog.splitlines() if "cte-ars" in line)


def test_rank_default_is_consensus_with_black_box_components(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One candidate is TorchScript (black-box): consensus falls back to cte-ei[gauss] + im.
    code = _rank(setup, tmp_path / "o", models=("ckpt0", "ckpt1", "script"))
    printed = capsys.readouterr().out
    assert code == 0
    assert "sorted by consensus" in printed
    payload = json.loads((tmp_path / "o" / "ranking.json").read_text())
    assert set(payload["rankers"]) == {"consensus", "cte-ei[gauss]", "im"}
    assert payload["primary"] == "consensus"
    assert sorted(payload["order"]) == ["model0", "model1", "scripted"]
    assert [r["model"] for r in payload["rankers"]["consensus"]["ranking"]] == payload["order"]
    assert set(payload["profiles"]) == {"model0", "model1", "scripted"}
    assert "degenerate" in payload
    header = (tmp_path / "o" / "ranking.csv").read_text().splitlines()[0].split(",")
    assert header[:4] == ["model", "consensus", "consensus:rank", "cte-ei[gauss]"]
    assert {"im", "degenerate", "foreground_fraction", "input_dependence"} <= set(header)
    # Grey-box candidates only: the grey-box components (feature dropout).
    assert _rank(setup, tmp_path / "g", models=("ckpt0", "ckpt1")) == 0
    payload = json.loads((tmp_path / "g" / "ranking.json").read_text())
    assert set(payload["rankers"]) == {"consensus", "cte-ei[dropout]", "im"}


def test_rank_all_puts_consensus_first_and_cte_ars_only_with_instances(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alframe.ranking import RANKERS

    assert _rank(setup, tmp_path / "a", "-m", "all", models=("ckpt0", "script")) == 0
    printed = capsys.readouterr().out
    assert "sorted by consensus" in printed
    payload = json.loads((tmp_path / "a" / "ranking.json").read_text())
    assert payload["primary"] == "consensus"
    assert not any(r.startswith("cte-ars") for r in payload["rankers"])
    header = (tmp_path / "a" / "ranking.csv").read_text().splitlines()[0]
    assert "cte-ars" not in header and "source-dice" not in header
    expected = {n for n in RANKERS.names() if n not in ("cte-ars", "source-dice")}
    assert {r.split("[")[0] for r in payload["rankers"]} == expected
    assert _rank(setup, tmp_path / "i", "-m", "all", "--instances", models=("ckpt0",)) == 0
    payload = json.loads((tmp_path / "i" / "ranking.json").read_text())
    assert "cte-ars[gauss]" in payload["rankers"] and payload["primary"] == "consensus"


def test_rank_absolute_strength_is_labelled(setup: dict[str, Path], tmp_path: Path) -> None:
    args = ["-m", "cte-ei", "--absolute-strength", "--strength", "0.1", "0.2"]
    assert _rank(setup, tmp_path / "o", *args, models=("ckpt0",)) == 0
    payload = json.loads((tmp_path / "o" / "ranking.json").read_text())
    info = payload["rankers"]["cte-ei[gauss-abs]"]["info"]
    assert (info["scale"], info["low"], info["high"]) == ("absolute", 0.1, 0.2)


def test_unknown_perturbation_is_an_error_with_the_default_method(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    assert _rank(setup, tmp_path / "o", "--perturbation", "blur", models=("ckpt0",)) == 2


def test_adapt_cli_writes_rankable_zoo(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zoo = tmp_path / "zoo"
    target = str(setup["data"] / "target" / "images")
    code = main(["adapt", "-c", str(setup["ckpt0"]), "-t", target, "-m", "adabn", "-o", str(zoo)])
    assert code == 0
    assert (zoo / "epoch_001.ckpt").is_file()
    code = main(
        [
            "rank",
            "-c",
            str(zoo / "epoch_001.ckpt"),
            "-i",
            target,
            "--no-track",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert code == 0
    capsys.readouterr()
    assert (
        main(["adapt", "-c", str(setup["ckpt0"]), "-t", target, "-m", "dann", "-o", str(zoo)]) == 2
    )
    assert "unknown adapters name" in capsys.readouterr().err
    assert (
        main(["adapt", "-c", str(setup["ckpt0"]), "-t", target, "-m", "adabn", "-o", str(zoo)]) == 2
    )
    assert "--overwrite" in capsys.readouterr().err
