"""Dice / IoU formulas, the loss with ignored pixels, and the evaluation helpers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score
from torch.utils.data import DataLoader

from alframe.config import ModelConfig
from alframe.errors import ConfigError, DataError, ModelError
from alframe.models import (
    IGNORE_INDEX,
    SegmentationLoss,
    build_model,
    evaluate_segmentation,
    format_table,
    per_image_dice_iou,
    summarize,
    write_evaluation,
)


def _square(size: int, top: int, left: int, side: int, value: int = 1) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.int64)
    mask[top : top + side, left : left + side] = value
    return mask


def test_binary_dice_iou_match_sklearn() -> None:
    pairs = [
        (_square(16, 2, 2, 6), _square(16, 4, 4, 6)),  # partial overlap
        (_square(16, 0, 0, 8), _square(16, 0, 0, 8)),  # identical
        (_square(16, 0, 0, 4), _square(16, 10, 10, 4)),  # disjoint
        (np.zeros((16, 16), dtype=np.int64), _square(16, 3, 3, 5)),  # missed everything
    ]
    pred = torch.from_numpy(np.stack([p for p, _ in pairs]))
    target = torch.from_numpy(np.stack([t for _, t in pairs]))
    dice, iou = per_image_dice_iou(pred, target, num_classes=2)
    for b, (p, t) in enumerate(pairs):
        expected_dice = f1_score(t.ravel(), p.ravel(), zero_division=0)
        expected_iou = jaccard_score(t.ravel(), p.ravel(), zero_division=0)
        assert dice[b, 1].item() == pytest.approx(expected_dice)
        assert iou[b, 1].item() == pytest.approx(expected_iou)
    # Partial overlap by hand: |P|=|G|=36, |P∩G|=16 -> Dice 32/72, IoU 16/56.
    assert dice[0, 1].item() == pytest.approx(32 / 72)
    assert iou[0, 1].item() == pytest.approx(16 / 56)


def test_multiclass_dice_iou_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, size=(3, 12, 12))
    target = rng.integers(0, 4, size=(3, 12, 12))
    dice, iou = per_image_dice_iou(torch.from_numpy(pred), torch.from_numpy(target), num_classes=4)
    for b in range(3):
        expected_dice = f1_score(
            target[b].ravel(), pred[b].ravel(), labels=[0, 1, 2, 3], average=None
        )
        expected_iou = jaccard_score(
            target[b].ravel(), pred[b].ravel(), labels=[0, 1, 2, 3], average=None
        )
        np.testing.assert_allclose(dice[b].numpy(), expected_dice)
        np.testing.assert_allclose(iou[b].numpy(), expected_iou)


def test_empty_prediction_and_ground_truth_score_one() -> None:
    empty = torch.zeros(1, 8, 8, dtype=torch.long)
    dice, iou = per_image_dice_iou(empty, empty, num_classes=2)
    assert dice[0, 1].item() == 1.0 and iou[0, 1].item() == 1.0
    # Only one side empty: 0.
    full = torch.ones(1, 8, 8, dtype=torch.long)
    dice, iou = per_image_dice_iou(empty, full, num_classes=2)
    assert dice[0, 1].item() == 0.0 and iou[0, 1].item() == 0.0


def test_ignored_pixels_do_not_count_in_metrics() -> None:
    target = torch.from_numpy(_square(8, 0, 0, 4))[None]
    pred = target.clone()
    pred[0, 6:, 6:] = 1  # a false positive ...
    target[0, 6:, 6:] = IGNORE_INDEX  # ... where nobody labelled anything
    dice, _ = per_image_dice_iou(pred, target, num_classes=2)
    assert dice[0, 1].item() == 1.0


@pytest.mark.parametrize("num_classes", [2, 3])
def test_ignored_pixels_do_not_contribute_to_the_loss(num_classes: int) -> None:
    generator = torch.Generator().manual_seed(0)
    channels = 1 if num_classes == 2 else num_classes
    logits = torch.randn(2, channels, 8, 8, generator=generator, requires_grad=True)
    mask = torch.randint(0, num_classes, (2, 8, 8), generator=generator)
    mask[:, :3] = IGNORE_INDEX
    loss_fn = SegmentationLoss(num_classes)
    loss = loss_fn(logits, mask)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, :, :3] == 0)
    assert torch.any(logits.grad[:, :, 3:] != 0)
    # Whatever the model predicts on ignored pixels, the loss is the same.
    changed = logits.detach().clone()
    changed[:, :, :3] = torch.randn(2, channels, 3, 8, generator=generator) * 10
    torch.testing.assert_close(loss_fn(changed, mask), loss.detach())
    # And it equals the loss of the labelled part alone.
    torch.testing.assert_close(loss_fn(logits.detach()[:, :, 3:], mask[:, 3:]), loss.detach())


def test_loss_of_fully_ignored_batch_is_zero_and_finite() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = SegmentationLoss(3)(logits, torch.full((1, 4, 4), IGNORE_INDEX))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0)
    loss.backward()


def test_loss_weights_and_perfect_prediction() -> None:
    mask = torch.from_numpy(_square(8, 2, 2, 4))[None]
    perfect = (mask.float() * 40 - 20)[:, None]  # large logits of the right sign
    assert SegmentationLoss(2)(perfect, mask).item() < 1e-3
    with pytest.raises(ConfigError, match="dice_weight"):
        SegmentationLoss(2, dice_weight=0, ce_weight=0)
    with pytest.raises(DataError, match="class indices"):
        from alframe.models import check_mask

        check_mask(mask * 255, 2)


def _loader(num_classes: int, n: int = 6) -> DataLoader:
    generator = torch.Generator().manual_seed(3)
    items = [
        {
            "image": torch.randn(1, 32, 32, generator=generator),
            "mask": torch.randint(0, num_classes, (32, 32), generator=generator),
            "id": f"case{i:02d}",
            "index": i,
        }
        for i in range(n)
    ]
    return DataLoader(items, batch_size=4)  # type: ignore[arg-type]


@pytest.mark.parametrize("num_classes", [2, 3])
def test_evaluate_segmentation_matches_per_image_formula(num_classes: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="Unet", encoder="tu-test_resnet", encoder_depth=3)
    model = build_model(cfg, 1, num_classes)
    loader = _loader(num_classes)
    model.train()
    df = evaluate_segmentation(model, loader, num_classes, "toy", progress=False)
    assert model.training  # the caller's mode is restored
    assert list(df["id"]) == [f"case{i:02d}" for i in range(6)]
    assert df.attrs["name"] == "toy"
    if num_classes == 3:
        assert {"dice_class1", "iou_class1", "dice_class2", "iou_class2"} <= set(df.columns)
    # Recompute independently with sklearn.
    model.eval()
    expected = []
    with torch.no_grad():
        for batch in loader:
            logits = model(batch["image"])
            preds = (logits[:, 0] > 0).long() if num_classes == 2 else logits.argmax(1)
            for p, t in zip(preds.numpy(), batch["mask"].numpy()):
                labels = list(range(1, num_classes))
                scores = f1_score(
                    t.ravel(), p.ravel(), labels=labels, average=None, zero_division=1
                )
                expected.append(float(np.mean(scores)))
    np.testing.assert_allclose(df["dice"].to_numpy(), expected, rtol=1e-6)


def test_evaluate_refuses_wrong_class_count() -> None:
    cfg = ModelConfig(arch="Unet", encoder="tu-test_resnet", encoder_depth=3)
    model = build_model(cfg, 1, 3)
    with pytest.raises(ModelError, match="3 channels but num_classes is 4"):
        evaluate_segmentation(model, _loader(3), 4, "toy", progress=False)


def test_summarize_write_and_format(tmp_path: Path) -> None:
    df = pd.DataFrame({"id": ["a", "b", "c"], "dice": [1.0, 0.5, 0.0], "iou": [1.0, 0.25, 0.0]})
    stats = summarize(df)
    assert stats["n"] == 3
    assert stats["dice_mean"] == pytest.approx(0.5)
    assert stats["dice_std"] == pytest.approx(np.std([1.0, 0.5, 0.0]))
    assert stats["iou_mean"] == pytest.approx(1.25 / 3)
    single = summarize(df.iloc[:1])
    assert single["dice_std"] == 0.0
    assert math.isnan(summarize(df.iloc[:0])["dice_mean"])

    out = tmp_path / "sub" / "scores.csv"
    assert write_evaluation(df, out) == out
    pd.testing.assert_frame_equal(pd.read_csv(out), df)
    assert [p.name for p in out.parent.iterdir()] == ["scores.csv"]  # no temp file left

    table = format_table({"site_a": df, "empty": df.iloc[:0]})
    lines = table.splitlines()
    assert lines[0].split() == ["set", "n", "Dice", "IoU"]
    assert "site_a" in lines[1] and "0.500 ± 0.408" in lines[1]
    assert lines[2].split() == ["empty", "0", "-", "-"]


def test_write_evaluation_keeps_old_file_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    out.write_text("old\n")

    class Broken(pd.DataFrame):
        def to_csv(self, *args: object, **kwargs: object) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_evaluation(Broken({"id": ["a"]}), out)
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
