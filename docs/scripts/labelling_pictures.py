"""The pictures of a labelling project and its report, on synthetic data, for the docs.

What it does, offline on CPU (about four minutes on two cores):

1. writes synthetic images (64², bright ellipses on noise) and a recipe that picks with CoreSet
   over a random-weight timm encoder (no MAE to train, so the script stays quick);
2. runs three labelling rounds through the CLI: ``round next``, ``round import`` of the
   synthetic ground truth, and two ``round train`` runs per round (seeds 0 and 1, so the
   learning curve has a band over them);
3. writes ``round status --report`` and checks it in Debian's headless Chromium
   (``apt-get install chromium``): every picture decoded, the screenshot not blank;
4. copies three pictures into ``docs/images/``: ``labelling_pool.png`` (round 3's picks in the
   pool projection), ``labelling_picked.png`` (those picks with the model's prediction) and
   ``labelling_learning_curve.png``; ``--report-shot`` also saves a screenshot of the report.

Run from the repository root::

    python docs/scripts/labelling_pictures.py [--out docs/images] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import _browser as browser  # noqa: E402  (beside this script)


def _label_round(project: Path, work: Path, round_index: int) -> Path:
    """The synthetic ground truth of the round's picks, as the annotators would return it."""
    from PIL import Image

    from alframe.annotate import open_project

    with open_project(project, write=False) as opened:
        samples = opened.samples()
        cases = opened.case_of()
        ids = [
            r["id"]
            for r in opened.store.query("SELECT id FROM selections WHERE round = ?", (round_index,))
        ]
    masks = work / f"masks_{round_index}"
    masks.mkdir()
    for item in ids:
        mask_path = samples[item].mask_path
        assert mask_path is not None
        Image.open(mask_path).save(masks / f"{cases[item]}.png")
    return masks


def _save_small(source: Path, target: Path) -> None:
    """A copy with a 128-colour palette: the same picture at about half the size."""
    from PIL import Image

    with Image.open(source) as picture:
        small = picture.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    small.save(target, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--report-shot", help="also save a screenshot of the report here")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import yaml

    from alframe.cli.commands import quiet_lightning
    from alframe.cli.main import main as alframe
    from alframe.config import recipe_from_dict
    from alframe.data.synthetic import synthetic_recipe_dict, write_synthetic_dataset

    chromium = browser.chromium()
    quiet_lightning()
    work = Path(tempfile.mkdtemp(prefix="alframe-pictures-"))
    try:
        write_synthetic_dataset(work / "data", n_images=64, image_size=64, seed=1)
        raw = synthetic_recipe_dict(work / "data", image_size=64)
        raw["select"] = {"strategy": "coreset"}
        raw["embed"] = {"backbone": "timm", "encoder": "resnet10t", "batch_size": 16}
        raw["train"].update(max_epochs=args.epochs, batch_size=4, progress=False)
        raw["data"]["evaluate"] = {"target_test": {"dataset": "target", "split": "test"}}
        raw["tracking"] = {"enabled": False}
        raw["output_dir"] = str(work / "runs")
        recipe_from_dict(raw)  # validate before use
        (work / "recipe.yaml").write_text(yaml.safe_dump(raw))
        project = work / "project"
        p = str(project)
        assert alframe(["project", "init", p, "--recipe", str(work / "recipe.yaml")]) == 0
        for round_index in (1, 2):
            assert alframe(["round", "next", p, "--budget", "6"]) == 0
            masks = _label_round(project, work, round_index)
            assert alframe(["round", "import", p, "--from", str(masks)]) == 0
            for seed in (0, 1):
                assert alframe(["round", "train", p, "--no-track", "--set", f"seed={seed}"]) == 0
        assert alframe(["round", "next", p, "--budget", "8"]) == 0
        assert alframe(["round", "status", p, "--report"]) == 0

        report = (project / "report.html").as_uri()
        common = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        common.append(f"--user-data-dir={work / 'chromium'}")
        dom = subprocess.run(
            [*common, "--dump-dom", report], check=True, capture_output=True, text=True, timeout=120
        ).stdout
        loaded = re.search(r'data-images-loaded="(\d+)/(\d+)"', dom)
        if loaded is None or loaded.group(1) != loaded.group(2) or loaded.group(2) == "0":
            raise SystemExit(f"the report's pictures did not load in Chromium: {loaded}")
        print(f"report rendered in Chromium: {loaded.group(1)} of {loaded.group(2)} pictures")
        if args.report_shot:
            subprocess.run(
                [*common, "--window-size=1100,2600", f"--screenshot={args.report_shot}", report],
                check=True,
                capture_output=True,
                timeout=120,
            )
            print(f"screenshot: {args.report_shot}")

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        copies = {
            project / "rounds" / "003" / "pictures" / "pool.png": "labelling_pool.png",
            project / "rounds" / "003" / "pictures" / "picked.png": "labelling_picked.png",
            project / "train" / "004" / "pictures" / "learning_curve.png": (
                "labelling_learning_curve.png"
            ),
        }
        for source, name in copies.items():
            _save_small(source, out / name)
            print(f"{out / name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
