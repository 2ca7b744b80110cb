"""CTE scores, perturbations, hooks, inference budget and correlations (alframe.ranking)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from alframe.errors import ConfigError, DataError, ModelError
from alframe.ranking import (
    Predictor,
    TargetImages,
    correlate,
    create_ranker,
    make_perturbation,
    rank_models,
    validate,
)
from alframe.ranking import scores as S


def _proba(foreground: np.ndarray) -> np.ndarray:
    fg = np.asarray(foreground, dtype=np.float64)
    return np.stack([1.0 - fg, fg])


def _tiny_unet() -> nn.Module:
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        "resnet18",
        encoder_weights=None,
        in_channels=1,
        classes=1,
        encoder_depth=3,
        decoder_channels=[16, 8, 8],
    )
    # Non-trivial BatchNorm statistics, set deterministically without touching the global RNG.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(
                    0.1 * torch.randn(module.num_features, generator=generator)
                )
    return model.eval()


def _images(n: int = 6, size: int = 32, seed: int = 0) -> TargetImages:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    labels = (images[:, 0] > 0).astype(np.int64)
    return TargetImages.from_array(images, labels=labels)


# ------------------------------------------------------------------------------- scores


def test_nhd_equals_one_minus_iou_on_hand_made_masks() -> None:
    a = np.zeros((6, 6))
    b = np.zeros((6, 6))
    a[1:4, 1:4] = 0.9  # 9 pixels
    b[2:5, 2:5] = 0.8  # 9 pixels, overlap 2×2 = 4
    iou = 4 / (9 + 9 - 4)
    assert S.nhd_score(_proba(a), _proba(b)) == pytest.approx(iou)
    assert S.nhd_score(_proba(a), _proba(a)) == 1.0


def test_ei_matches_direct_numpy_formula() -> None:
    rng = np.random.default_rng(1)
    pu, pa = rng.uniform(size=(2, 16, 16))
    bu, ba = pu > 0.5, pa > 0.5
    union = bu | ba
    expected = []
    for i in np.flatnonzero(union.ravel()):
        cu = pu.ravel()[i] if bu.ravel()[i] else 1 - pu.ravel()[i]
        ca = pa.ravel()[i] if ba.ravel()[i] else 1 - pa.ravel()[i]
        expected.append(math.sqrt(cu * ca) if bu.ravel()[i] == ba.ravel()[i] else 0.0)
    assert S.effective_invariance(_proba(pu), _proba(pa)) == pytest.approx(np.mean(expected))


def test_multiclass_scores_average_one_vs_rest() -> None:
    rng = np.random.default_rng(2)
    pu = rng.dirichlet(np.ones(3), size=(8, 8)).transpose(2, 0, 1)
    pa = rng.dirichlet(np.ones(3), size=(8, 8)).transpose(2, 0, 1)
    per_class = [S.effective_invariance(_proba(pu[c]), _proba(pa[c])) for c in (1, 2)]
    assert S.effective_invariance(pu, pa) == pytest.approx(np.nanmean(per_class))


def test_empty_union_is_nan_not_perfect() -> None:
    empty = _proba(np.full((5, 5), 0.1))
    assert math.isnan(S.nhd_score(empty, empty))
    assert math.isnan(S.effective_invariance(empty, empty))
    assert math.isnan(S.adapted_rand_score(np.zeros((5, 5)), np.zeros((5, 5))))


def _band_by_loops(labels: np.ndarray) -> np.ndarray:
    height, width = labels.shape
    band = np.zeros_like(labels, dtype=bool)
    for y in range(height):
        for x in range(width):
            window = labels[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
            band[y, x] = window.max() != window.min()
    return band


def test_ars_matches_skimage_adapted_rand_error() -> None:
    from skimage.metrics import adapted_rand_error

    lu = np.zeros((12, 12), dtype=np.int64)
    la = np.zeros((12, 12), dtype=np.int64)
    lu[1:6, 1:6] = 1
    lu[7:11, 2:10] = 2
    la[1:6, 1:7] = 5  # same object, shifted border
    la[7:11, 2:6] = 3  # object 2 split in two
    la[7:11, 6:10] = 4
    la[0:3, 9:12] = 7  # a false positive
    mask = ((lu > 0) | (la > 0)) & ~_band_by_loops(lu)
    u = lu[mask].copy()
    a = la[mask].copy()
    ids = 100 + np.arange(mask.sum())
    u[u == 0] = ids[u == 0]
    a[a == 0] = ids[a == 0]
    expected = 1 - adapted_rand_error(u.reshape(1, -1), a.reshape(1, -1), ignore_labels=())[0]
    assert S.adapted_rand_score(lu, la) == pytest.approx(expected)
    assert S.adapted_rand_score(lu, lu) == pytest.approx(1.0)
    assert 0.0 < S.adapted_rand_score(lu, la) < 1.0


def test_entropy_and_im_formulas() -> None:
    p = _proba(np.array([[0.5, 0.9], [0.1, 0.5]]))
    h = -(p * np.log(p)).sum(axis=0)
    assert S.mean_entropy(p) == pytest.approx(h.mean())
    marginal = p.reshape(2, -1).mean(axis=1)
    assert S.information_maximisation(p) == pytest.approx(
        -(marginal * np.log(marginal)).sum() - h.mean()
    )


def test_hopkins_separates_clustered_from_uniform() -> None:
    rng = np.random.default_rng(0)
    uniform = rng.uniform(size=(300, 2))
    clustered = np.concatenate(
        [rng.normal(c, 0.01, size=(100, 2)) for c in ((0, 0), (1, 1), (0, 1))]
    )
    assert S.hopkins_statistic(clustered, np.random.default_rng(1)) > 0.85
    assert 0.3 < S.hopkins_statistic(uniform, np.random.default_rng(1)) < 0.7


# ------------------------------------------------------------------------ perturbations


def test_input_perturbations_are_per_image_and_batch_size_independent() -> None:
    x = np.random.default_rng(0).normal(size=(5, 1, 8, 8)).astype(np.float32)
    for kind in ("gauss", "brightness", "contrast", "gamma"):
        perturbation = make_perturbation(kind)
        whole = perturbation.apply(x, np.random.default_rng(42))
        rng = np.random.default_rng(42)
        pieces = np.concatenate([perturbation.apply(x[:2], rng), perturbation.apply(x[2:], rng)])
        np.testing.assert_array_equal(whole, pieces)
        assert not np.allclose(whole, x)
    # Not clipped: noise on normalised input leaves [0, 1].
    ones = np.ones((1, 1, 16, 16), dtype=np.float32)
    assert make_perturbation("gauss").apply(ones, np.random.default_rng(0)).max() > 1.0
    with pytest.raises(ConfigError, match="unknown perturbation"):
        make_perturbation("blur")


def test_dropout_hooks_leave_the_model_unchanged() -> None:
    model = _tiny_unet()
    images = _images(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        clean_before = model(torch.from_numpy(images.images))
    predictor = Predictor.from_module(model, "unet", num_classes=2)
    for where in ("dropout", "dropout-all"):
        ranker = create_ranker("cte-ei", perturbation=where, p=0.5)
        result = ranker.score(predictor, images, batch_size=3)
        assert result.per_image.shape == (4,)
        assert np.nanmean(result.per_image) < 1.0  # the perturbation did act
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    with torch.no_grad():
        assert torch.equal(clean_before, model(torch.from_numpy(images.images)))
    assert not model.training


@pytest.mark.parametrize(
    ("method", "perturbation", "passes"),
    [
        ("cte-ei", "gauss", 2),
        ("cte-nhd", "dropout", 2),
        ("cte-ars", "contrast", 2),
        ("entropy", None, 1),
        ("transfer-score", None, 1),
    ],
)
def test_forward_passes_per_image_are_counted(
    method: str, perturbation: str | None, passes: int
) -> None:
    model = _tiny_unet()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _m, inputs: seen.append(int(inputs[0].shape[0])))
    params = {"perturbation": perturbation} if perturbation else {}
    ranker = create_ranker(method, **params)
    result = ranker.score(Predictor.from_module(model, "m", 2), _images(5), batch_size=2)
    assert sum(seen) == passes * 5
    assert max(seen) <= 2  # streamed in batches
    assert result.forward_passes == passes


def test_constant_model_ranks_above_noisy_model() -> None:
    disk = np.zeros((32, 32))
    disk[8:24, 8:24] = 0.95

    def ignores_input(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.from_numpy(disk).float().expand(batch.shape[0], 1, 32, 32)
        return torch.cat([1 - fg, fg], dim=1)

    def noisy(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(4 * batch[:, :1])
        return torch.cat([1 - fg, fg], dim=1)

    models = [
        Predictor.from_function(noisy, "noisy"),
        Predictor.from_function(ignores_input, "stable"),
    ]
    rankers = [create_ranker("cte-ei"), create_ranker("cte-nhd")]
    report = rank_models(models, _images(), rankers, progress=False)
    for ranker in report.rankers:
        assert report.ranked(ranker)[0][0] == "stable"
    assert report.scores("cte-nhd[gauss]")["stable"] == 1.0
    assert report.scores("cte-ei[gauss]")["stable"] == pytest.approx(0.95)


def test_images_with_empty_union_are_skipped() -> None:
    images = _images(4)
    blank = images.images.copy()
    blank[1] = -5.0  # predicted all background, clean and perturbed

    def threshold_model(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(20 * batch[:, :1])
        return torch.cat([1 - fg, fg], dim=1)

    target = TargetImages.from_array(blank)
    result = create_ranker("cte-ei").score(Predictor.from_function(threshold_model), target)
    assert math.isnan(result.per_image[1])
    assert result.n_scored == 3
    assert result.dataset_score == pytest.approx(np.mean(result.per_image[[0, 2, 3]]))


def test_black_box_model_refused_by_grey_box_rankers() -> None:
    predictor = Predictor.from_function(lambda b: torch.full((b.shape[0], 2, 32, 32), 0.5))
    with pytest.raises(ModelError, match="grey-box"):
        create_ranker("cte-ei", perturbation="dropout").score(predictor, _images(2))
    report = rank_models([predictor], _images(2), [create_ranker("transfer-score")], progress=False)
    assert report.skipped and not report.results


# -------------------------------------------------------------------------- validation


def test_correlations_match_scipy() -> None:
    from scipy import stats

    rng = np.random.default_rng(3)
    x = rng.normal(size=9)
    y = x + rng.normal(scale=0.8, size=9)
    y[2] = y[5]  # ties for tau-b
    result = correlate(x, y, n_resamples=1000, seed=0)
    assert result["pearson"].statistic == pytest.approx(stats.pearsonr(x, y).statistic)
    assert result["spearman"].statistic == pytest.approx(stats.spearmanr(x, y).statistic)
    assert result["kendall"].statistic == pytest.approx(stats.kendalltau(x, y).statistic)
    # Random permutations: p-values agree with scipy's permutation test up to Monte-Carlo noise.
    reference = stats.permutation_test(
        (y,),
        lambda b: float(np.corrcoef(x, b)[0, 1]),
        permutation_type="pairings",
        n_resamples=4000,
        vectorized=False,
        rng=np.random.default_rng(1),
    )
    assert result["pearson"].p_value == pytest.approx(reference.pvalue, abs=0.03)
    assert correlate(x, y, seed=0) == result  # seeded


def test_exact_permutation_p_values_equal_scipy() -> None:
    from scipy import stats

    x = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.2])
    y = np.array([0.2, 0.5, 0.3, 0.9, 0.6, 0.1])
    result = correlate(x, y, n_resamples=1000)
    assert result["spearman"].n_resamples == math.factorial(6)
    for method, function in (
        ("pearson", stats.pearsonr),
        ("spearman", stats.spearmanr),
        ("kendall", stats.kendalltau),
    ):
        reference = stats.permutation_test(
            (y,),
            lambda b, f=function: f(x, b).statistic,
            permutation_type="pairings",
            n_resamples=math.inf,
        )
        assert result[method].p_value == pytest.approx(reference.pvalue), method
    with pytest.raises(DataError, match="finite"):
        correlate([1.0, math.nan, 2.0], [1.0, 2.0, 3.0])


def test_validate_gives_true_dice_and_correlations(tmp_path: object) -> None:
    images = _images(4)

    def make(scale: float) -> Predictor:
        def f(batch: torch.Tensor) -> torch.Tensor:
            fg = torch.sigmoid(scale * batch[:, :1])
            return torch.cat([1 - fg, fg], dim=1)

        return Predictor.from_function(f, name=f"s{scale}")

    models = [make(s) for s in (-2.0, 0.5, 1.0, 3.0)]
    report = rank_models(models, images, [create_ranker("entropy")], progress=False)
    validate(report, models, images, n_resamples=100)
    assert report.dice["s3.0"] == pytest.approx(1.0)  # labels are x > 0
    assert report.dice["s-2.0"] < 0.1
    assert set(report.correlations["entropy"]) == {"pearson", "spearman", "kendall"}
    assert "true_dice" in report.format()


def test_all_permutations_helper_is_consistent() -> None:
    # Sanity: the exact null of Spearman is symmetric around 0 for distinct values.
    values = [
        correlate(np.arange(4.0), np.array(p, float), n_resamples=100)["spearman"].statistic
        for p in itertools.permutations(range(4))
    ]
    assert np.mean(values) == pytest.approx(0.0)


def _map_by_explicit_matching(pred: np.ndarray, true: np.ndarray) -> float:
    """Reference mAP: IoU of every instance pair by loops, one-to-one greedy matching per t."""
    p_ids = [i for i in np.unique(pred) if i]
    t_ids = [i for i in np.unique(true) if i]
    if not p_ids and not t_ids:
        return 1.0
    values = []
    for t in np.arange(0.5, 1.0, 0.05):
        used: set[int] = set()
        tp = 0
        for p in p_ids:
            for q in t_ids:
                a, b = pred == p, true == q
                iou = (a & b).sum() / (a | b).sum()
                if q not in used and iou > t:
                    used.add(q)
                    tp += 1
                    break
        values.append(tp / (len(p_ids) + len(t_ids) - tp))
    return float(np.mean(values))


def test_instance_map_matches_explicit_matching_on_constructed_maps() -> None:
    rng = np.random.default_rng(4)
    true = np.zeros((40, 40), dtype=np.int64)
    true[2:12, 2:12], true[20:30, 5:15], true[25:38, 25:38] = 1, 2, 3
    assert S.instance_average_precision(true, true) == 1.0
    shifted = np.roll(true, 2, axis=1)  # IoU 0.67 for the 10×10 squares
    merged = true.copy()
    merged[merged == 2] = 1  # two true cells predicted as one
    extra = true.copy()
    extra[34:38, 2:6] = 9  # a false positive
    for pred in (shifted, merged, extra, np.zeros_like(true)):
        assert S.instance_average_precision(pred, true) == pytest.approx(
            _map_by_explicit_matching(pred, true)
        )
    noisy = np.where(rng.random(true.shape) < 0.1, 0, true)
    assert S.instance_average_precision(noisy, true) == pytest.approx(
        _map_by_explicit_matching(noisy, true)
    )
    empty = np.zeros_like(true)
    assert S.instance_average_precision(empty, empty) == 1.0


def test_validation_with_instance_labels_uses_map() -> None:
    from alframe.ranking import rank_models, validate

    true = np.zeros((3, 32, 32), dtype=np.int64)
    true[:, 4:12, 4:12], true[:, 18:28, 18:28] = 1, 2
    images = TargetImages.from_array((true > 0).astype(np.float32)[:, None], labels=true)

    def perfect(batch: torch.Tensor) -> torch.Tensor:
        fg = batch[:, :1] * 20 - 10
        return torch.cat([-fg, fg], dim=1)

    def half(batch: torch.Tensor) -> torch.Tensor:
        out = perfect(batch)
        out[..., 16:] = torch.stack(
            [torch.ones_like(out[:, 0, :, 16:]), -torch.ones_like(out[:, 0, :, 16:])], 1
        )
        return out

    predictors = [
        Predictor.from_function(perfect, "perfect"),
        Predictor.from_function(half, "half"),
    ]
    report = validate(
        rank_models(predictors, images, [create_ranker("entropy")]), predictors, images, truth="map"
    )
    assert report.dice["perfect"] == pytest.approx(1.0)
    assert report.dice["half"] == pytest.approx(0.5)  # one of two cells found, no false positive
    with pytest.raises(ConfigError, match="truth"):
        validate(report, predictors, images, truth="iou")
