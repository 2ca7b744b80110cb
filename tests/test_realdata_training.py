"""Real chest X-rays: a short training run learns the lungs (marked realdata; needs ALFRAME_DATA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alframe.config import load_recipe
from alframe.workflows import train_and_evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.realdata
def test_short_training_on_shenzhen_beats_trivial_predictions(
    cxr_root: Path, tmp_path: Path
) -> None:
    from alframe.data import DataCatalog, read_mask

    recipe = load_recipe(
        REPO / "recipes" / "cxr_montgomery_to_shenzhen.yaml",
        [
            "data.image_size=[64, 64]",
            "train.max_epochs=12",
            "train.batch_size=8",
            "train.lr=0.003",
            "train.early_stopping_patience=0",
            "train.progress=false",
            "data.evaluate={shenzhen_test: {dataset: shenzhen, split: test}}",
        ],
    )
    pool = DataCatalog(recipe).samples(recipe.data.train)
    train_ids = [s.id for s in pool[:24]]
    result = train_and_evaluate(recipe, out_dir=tmp_path / "run", track=False, train_ids=train_ids)
    table = result.evaluations["shenzhen_test"]
    assert len(table) == 110
    dice = float(table["dice"].mean())

    # All-background scores 0 on every image (each has lungs); all-foreground scores
    # 2f/(1+f) for lung fraction f (about 0.39 on Shenzhen). The model must beat both clearly.
    test = DataCatalog(recipe).samples(recipe.data.evaluate["shenzhen_test"])
    fractions = np.array([read_mask(s, dict(recipe.data.classes), "binary").mean() for s in test])
    all_foreground = float(np.mean(2 * fractions / (1 + fractions)))
    assert dice > 0.75, dice
    assert dice > all_foreground + 0.25, (dice, all_foreground)
