"""CTE scores, perturbations, hooks, inference budget and correlations (alframe.ranking)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from alframe.errors import ConfigError, DataError, ModelError
from alframe.ranking import (
    INPUT_PERTURBATIONS,
    ConsensusRanker,
    InputPerturbation,
    Predictor,
    RankerResult,
    TargetImages,
    correlate,
    create_ranker,
    make_perturbation,
    normalised_ranks,
    rank_models,
    robust_range,
    robust_spread,
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


def _array(images: TargetImages) -> np.ndarray:
    """The in-memory (N, C, H, W) array of ``images``."""
    assert images.images is not None
    return images.images


def _input_perturbation(kind: str, **params: Any) -> InputPerturbation:
    """``make_perturbation`` for an input perturbation (typed: it has ``apply``)."""
    perturbation = make_perturbation(kind, **params)
    assert isinstance(perturbation, InputPerturbation)
    return perturbation


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
        perturbation = _input_perturbation(kind)
        whole = perturbation.apply(x, np.random.default_rng(42))
        rng = np.random.default_rng(42)
        pieces = np.concatenate([perturbation.apply(x[:2], rng), perturbation.apply(x[2:], rng)])
        np.testing.assert_array_equal(whole, pieces)
        assert not np.allclose(whole, x)
    # Not clipped: noise on normalised input leaves [0, 1]. A constant image has no spread, so
    # only the absolute form adds noise to it.
    ones = np.ones((1, 1, 16, 16), dtype=np.float32)
    absolute = _input_perturbation("gauss", scale="absolute")
    assert absolute.apply(ones, np.random.default_rng(0)).max() > 1.0
    with pytest.raises(ConfigError, match="unknown perturbation"):
        make_perturbation("blur")


def _textured(n: int = 4, size: int = 32, seed: int = 5) -> np.ndarray:
    """Positive images with a few hot pixels and different brightness per image."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.2, size=(n, 1, size, size)) * rng.uniform(0.5, 3.0, size=(n, 1, 1, 1))
    x[:, 0, 0, :3] = 40.0  # hot pixels: the robust statistics must ignore them
    return x.astype(np.float32)


@pytest.mark.parametrize("kind", INPUT_PERTURBATIONS)
def test_relative_perturbations_scale_with_the_image(kind: str) -> None:
    # The defining property of relative strengths: perturbing 0.1·x gives 0.1·(perturbed x).
    x = _textured()
    perturbation = _input_perturbation(kind)
    small = perturbation.apply(np.float32(0.1) * x, np.random.default_rng(42))
    large = perturbation.apply(x, np.random.default_rng(42))
    np.testing.assert_allclose(small, np.float32(0.1) * large, rtol=1e-5, atol=1e-6)
    assert not np.allclose(large, x)  # it did perturb


@pytest.mark.parametrize("kind", ["gauss", "brightness", "gamma"])
def test_absolute_perturbations_do_not_scale_with_the_image(kind: str) -> None:
    x = _textured()
    perturbation = _input_perturbation(kind, scale="absolute")
    small = perturbation.apply(np.float32(0.1) * x, np.random.default_rng(42))
    large = perturbation.apply(x, np.random.default_rng(42))
    assert not np.allclose(small, np.float32(0.1) * large, rtol=1e-3, atol=1e-4)


def test_relative_noise_is_a_fraction_of_each_images_spread() -> None:
    x = _textured(n=2)
    x[1] = 10.0 * x[0]
    perturbation = _input_perturbation("gauss", low=0.3, high=0.3)  # sigma = 0.3 spreads exactly
    noise = perturbation.apply(x, np.random.default_rng(0)) - x
    for index in range(2):
        assert noise[index].std() == pytest.approx(0.3 * robust_spread(x[index]), rel=0.1)
    shift = _input_perturbation("brightness", low=0.5, high=0.5).apply(x, np.random.default_rng(0))
    np.testing.assert_allclose(shift[1] - x[1], 5.0 * robust_spread(x[0]), rtol=1e-4)


def _percentile_by_sorting(values: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile written out (NumPy's default method)."""
    ordered = np.sort(values.ravel().astype(np.float64))
    position = q / 100.0 * (ordered.size - 1)
    below = math.floor(position)
    above = min(below + 1, ordered.size - 1)
    return float(ordered[below] + (position - below) * (ordered[above] - ordered[below]))


def test_robust_spread_and_range_match_a_direct_computation() -> None:
    image = _textured(n=1)[0]
    low, high = _percentile_by_sorting(image, 1.0), _percentile_by_sorting(image, 99.0)
    clipped = np.minimum(np.maximum(image.astype(np.float64), low), high)
    expected = math.sqrt(float(((clipped - clipped.mean()) ** 2).mean()))
    assert robust_spread(image) == pytest.approx(expected)
    assert robust_range(image) == pytest.approx(_percentile_by_sorting(np.abs(image), 99.0))
    assert robust_range(-image) == pytest.approx(robust_range(image))
    # Robust: three hot pixels of 40 inflate the plain standard deviation, not the spread.
    cool = image.copy()
    cool[0, 0, :3] = np.median(image)
    assert robust_spread(image) == pytest.approx(robust_spread(cool), rel=0.1)
    assert image.std() > 2 * robust_spread(image)
    flat = np.full((1, 8, 8), 3.0, dtype=np.float32)
    assert robust_spread(flat) == 0.0
    assert robust_range(np.zeros((1, 8, 8))) == 0.0


def test_relative_noise_perturbs_sparse_images() -> None:
    sparse = np.zeros((1, 1, 32, 32), dtype=np.float32)
    # One small bright object (8 of 1024 pixels), with more than one grey level: gamma leaves
    # a two-level image (0 and its maximum) unchanged by construction.
    sparse[0, 0, 4:6, 4:8] = np.linspace(0.25, 1.0, 8).reshape(2, 4)
    for kind in ("gauss", "brightness", "gamma"):
        out = _input_perturbation(kind).apply(0.5 * sparse, np.random.default_rng(0))
        assert not np.array_equal(out, 0.5 * sparse), kind


def test_unknown_perturbation_scale_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="relative"):
        make_perturbation("gauss", scale="percent")
    with pytest.raises(ConfigError, match="relative"):
        InputPerturbation("gauss", 0.1, 0.2, scale="abs")
    with pytest.raises(ConfigError, match="relative"):
        create_ranker("cte-ei", scale="log")
    assert create_ranker("cte-ei", scale="absolute").describe() == "cte-ei[gauss-abs]"
    assert create_ranker("cte-ei").describe() == "cte-ei[gauss]"
    # Feature perturbations have no strength scale: one label whatever the scale.
    assert create_ranker("cte-ei", perturbation="dropout", scale="absolute").describe() == (
        "cte-ei[dropout]"
    )
    assert make_perturbation("gauss", scale="absolute") == InputPerturbation(
        "gauss", 0.1, 0.2, "absolute"
    )


def _zscored(batch: torch.Tensor) -> torch.Tensor:
    """A scale-invariant model: per-image z-scoring, then a soft threshold."""
    x = batch[:, :1]
    z = (x - x.mean(dim=(2, 3), keepdim=True)) / x.std(dim=(2, 3), keepdim=True)
    fg = torch.sigmoid(3 * z)
    return torch.cat([1 - fg, fg], dim=1)


def test_scale_invariant_model_scores_the_same_on_rescaled_images() -> None:
    x = 0.5 + 0.2 * _array(_images(6))
    predictor = Predictor.from_function(_zscored, "z")
    scored: dict[tuple[str, str, float], tuple[np.ndarray, float]] = {}
    for scale in ("relative", "absolute"):
        for method in ("cte-ei", "cte-nhd"):
            for factor in (1.0, 0.1):
                images = TargetImages.from_array(np.float32(factor) * x)
                result = create_ranker(method, scale=scale).score(predictor, images, batch_size=4)
                scored[scale, method, factor] = (result.per_image, result.dataset_score)
    for method in ("cte-ei", "cte-nhd"):
        per_image, dataset = scored["relative", method, 1.0]
        small_per_image, small_dataset = scored["relative", method, 0.1]
        np.testing.assert_allclose(small_per_image, per_image, rtol=1e-5)
        assert small_dataset == pytest.approx(dataset, rel=1e-5)
        assert dataset < 1.0  # the noise did act
        # The paper's absolute sigma is ten times stronger on the dimmer copy.
        assert scored["absolute", method, 0.1][1] < scored["absolute", method, 1.0][1] - 0.05


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


def test_constant_model_is_flagged_and_ranked_below_the_noisy_model() -> None:
    # A mask that ignores the input is perfectly consistent: CTE alone ranks it first. The
    # degenerate-model guard flags it and every ranker puts it last.
    disk = np.zeros((32, 32))
    disk[8:24, 8:24] = 0.95

    def ignores_input(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.from_numpy(disk).float().expand(batch.shape[0], 1, 32, 32)
        return torch.cat([1 - fg, fg], dim=1)

    def noisy(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(4 * batch[:, :1])
        return torch.cat([1 - fg, fg], dim=1)

    models = [
        Predictor.from_function(ignores_input, "stable"),
        Predictor.from_function(noisy, "noisy"),
    ]
    rankers = [create_ranker("cte-ei"), create_ranker("cte-nhd")]
    report = rank_models(models, _images(), rankers, progress=False)
    assert set(report.degenerate) == {"stable"}
    assert report.degenerate["stable"].startswith("input-independent")
    for ranker in report.rankers:
        assert [m for m, _ in report.ranked(ranker)] == ["noisy", "stable"]
        assert report.scores(ranker)["stable"] > report.scores(ranker)["noisy"]
    assert report.scores("cte-nhd[gauss]")["stable"] == 1.0
    assert report.scores("cte-ei[gauss]")["stable"] == pytest.approx(0.95)
    assert report.profiles["stable"].input_dependence == pytest.approx(0.0)


def _sigmoid_model(batch: torch.Tensor) -> torch.Tensor:
    fg = torch.sigmoid(20 * batch[:, :1])
    return torch.cat([1 - fg, fg], dim=1)


def test_images_with_empty_union_weigh_nothing() -> None:
    images = _images(4)
    blank = _array(images).copy()
    blank[1] = -5.0  # predicted all background, clean and perturbed

    target = TargetImages.from_array(blank)
    ranker = create_ranker("cte-ei")
    result = ranker.score(Predictor.from_function(_sigmoid_model), target)
    assert math.isnan(result.per_image[1])
    assert result.n_scored == 3
    # Weights |M| recomputed from the model's clean and perturbed outputs.
    perturbed = _input_perturbation("gauss").apply(blank, np.random.default_rng(42))
    with torch.no_grad():
        clean_fg = _sigmoid_model(torch.from_numpy(blank))[:, 1].numpy() > 0.5
        pert_fg = _sigmoid_model(torch.from_numpy(perturbed))[:, 1].numpy() > 0.5
    weights = (clean_fg | pert_fg).sum(axis=(1, 2)).astype(np.float64)
    assert weights[1] == 0
    keep = [0, 2, 3]
    expected = float((result.per_image[keep] * weights[keep]).sum() / weights[keep].sum())
    assert result.dataset_score == pytest.approx(expected)
    assert S.weighted_mean(result.per_image, weights) == pytest.approx(expected)


def test_weighted_mean_ignores_nan_and_zero_weights() -> None:
    values = np.array([0.5, math.nan, 1.0, 0.2])
    weights = np.array([2.0, 5.0, 1.0, 0.0])
    assert S.weighted_mean(values, weights) == pytest.approx((0.5 * 2 + 1.0 * 1) / 3)
    assert math.isnan(S.weighted_mean(values, np.zeros(4)))
    assert math.isnan(S.weighted_mean(np.full(2, math.nan), np.ones(2)))
    assert S.evaluation_mask_size(_proba(np.full((4, 4), 0.1)), _proba(np.full((4, 4), 0.1))) == 0


def test_dataset_score_pools_the_masked_pixels_of_all_images() -> None:
    # One model leaves images 1 and 3 empty; the other finds a little there. Both are scored
    # by the same rule: every masked pixel of every image weighs the same.
    x = _array(_images(5, seed=3)).copy()
    x[[1, 3]] -= 2.0

    def everywhere(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(6 * batch[:, :1])
        return torch.cat([1 - fg, fg], dim=1)

    def gappy(batch: torch.Tensor) -> torch.Tensor:
        out = everywhere(batch)
        dark = batch.mean(dim=(1, 2, 3)) < -1.0
        out[dark, 1] = 0.0
        out[dark, 0] = 1.0
        return out

    images = TargetImages.from_array(x)
    perturbed = _input_perturbation("gauss").apply(x, np.random.default_rng(42))  # seed 42: default
    for function, name in ((everywhere, "everywhere"), (gappy, "gappy")):
        with torch.no_grad():
            pu = function(torch.from_numpy(x))[:, 1].numpy().astype(np.float64)
            pa = function(torch.from_numpy(perturbed))[:, 1].numpy().astype(np.float64)
        bu, ba = pu > 0.5, pa > 0.5
        union = bu | ba
        cu, ca = np.where(bu, pu, 1 - pu), np.where(ba, pa, 1 - pa)
        ei = np.where(bu == ba, np.sqrt(cu * ca), 0.0)
        pooled_ei = ei[union].sum() / union.sum()
        pooled_nhd = 1.0 - (bu ^ ba).sum() / union.sum()
        predictor = Predictor.from_function(function, name)
        result_ei = create_ranker("cte-ei").score(predictor, images, batch_size=2)
        result_nhd = create_ranker("cte-nhd").score(predictor, images, batch_size=3)
        assert result_ei.dataset_score == pytest.approx(pooled_ei)
        assert result_nhd.dataset_score == pytest.approx(pooled_nhd)
        if name == "gappy":
            assert np.isnan(result_ei.per_image[[1, 3]]).all()
            assert result_ei.n_scored == 3
        else:
            assert result_ei.n_scored == 5
            # The old unweighted mean of the per-image scores is a different number here.
            assert abs(np.nanmean(result_ei.per_image) - pooled_ei) > 1e-3


def test_black_box_model_refused_by_grey_box_rankers() -> None:
    predictor = Predictor.from_function(lambda b: torch.full((b.shape[0], 2, 32, 32), 0.5))
    with pytest.raises(ModelError, match="grey-box"):
        create_ranker("cte-ei", perturbation="dropout").score(predictor, _images(2))
    report = rank_models([predictor], _images(2), [create_ranker("transfer-score")], progress=False)
    assert report.skipped and not report.results


# --------------------------------------------------------------------------- consensus


def test_normalised_ranks_by_hand() -> None:
    # rankdata of (0.3, 0.5, 0.5, -inf, 0.1) = (3, 4.5, 4.5, 1, 2); (r - 1) / 4; NaN -> 0.
    places = normalised_ranks({"a": 0.3, "b": 0.5, "c": 0.5, "d": math.nan, "e": 0.1})
    assert places == pytest.approx({"a": 0.5, "b": 0.875, "c": 0.875, "d": 0.0, "e": 0.25})
    assert normalised_ranks({"a": 1.0, "b": 1.0, "c": 1.0}) == pytest.approx(
        {"a": 0.5, "b": 0.5, "c": 0.5}
    )
    # Two NaN share the bottom places (1.5 each), so the worst finite score is at 2/3, not 0.
    assert normalised_ranks({"a": math.nan, "b": math.nan, "c": -3.0, "d": 2.0}) == pytest.approx(
        {"a": 0.0, "b": 0.0, "c": 2 / 3, "d": 1.0}
    )
    assert normalised_ranks({"only": -7.0}) == {"only": 1.0}
    assert normalised_ranks({"only": math.nan}) == {"only": 0.0}


def _shifted(slope: float, offset: float) -> Predictor:
    def f(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(slope * (batch[:, :1] - offset))
        return torch.cat([1 - fg, fg], dim=1)

    return Predictor.from_function(f, name=f"k{slope}t{offset}")


def _by_hand(goodness: list[float]) -> np.ndarray:
    from scipy.stats import rankdata

    return (rankdata(goodness) - 1.0) / (len(goodness) - 1)


def test_consensus_is_the_mean_normalised_rank_of_its_components() -> None:
    models = [_shifted(2.0, 0.0), _shifted(8.0, 0.3), _shifted(1.0, -0.5), _shifted(4.0, 1.0)]
    report = rank_models(models, _images(4), [create_ranker("consensus")], progress=False)
    # Black-box candidates: the gauss fallback components, scored and shown as columns.
    assert report.rankers == ["consensus", "cte-ei[gauss]", "im"]
    assert report.primary == "consensus"
    names = [m.name for m in models]
    places = [_by_hand([report.scores(c)[m] for m in names]) for c in ("cte-ei[gauss]", "im")]
    assert not np.array_equal(places[0], places[1])  # the components disagree: the mean matters
    consensus = report.scores("consensus")
    np.testing.assert_allclose([consensus[m] for m in names], np.mean(places, axis=0))
    assert report.order() == [m for m, _ in report.ranked("consensus")]


def test_consensus_orients_lower_is_better_components() -> None:
    def result(ranker: str, model: str, score: float, higher_is_better: bool) -> RankerResult:
        return RankerResult(ranker, model, np.full(2, math.nan), score, higher_is_better, 1, 0.0)

    entropy = {"a": 0.2, "b": 0.9, "c": 0.5}  # lower is better: a, c, b
    invariance = {"a": 0.7, "b": 0.8, "c": math.nan}  # higher is better: b, a; c unscored
    combined = ConsensusRanker().combine(
        [
            {m: result("entropy", m, v, False) for m, v in entropy.items()},
            {m: result("cte-ei", m, v, True) for m, v in invariance.items()},
        ],
        n_images=2,
    )
    # entropy places: a 1, c 0.5, b 0; cte-ei places: b 1, a 0.5, c 0 (NaN).
    assert {m: r.dataset_score for m, r in combined.items()} == pytest.approx(
        {"a": 0.75, "b": 0.5, "c": 0.25}
    )
    assert combined["a"].info["places"] == pytest.approx({"entropy": 1.0, "cte-ei": 0.5})
    assert combined["a"].higher_is_better
    assert np.isnan(combined["a"].per_image).all() and combined["a"].per_image.shape == (2,)


def test_consensus_scores_a_shared_component_once() -> None:
    calls: list[int] = []
    model = _shifted(3.0, 0.2)

    def counted(batch: torch.Tensor) -> torch.Tensor:
        calls.append(int(batch.shape[0]))
        return model.function(batch)

    predictor = Predictor.from_function(counted, "counted")
    images = _images(4)
    alone = rank_models([predictor], images, [create_ranker("consensus")], progress=False)
    passes_alone = len(calls)
    calls.clear()
    both = rank_models(
        [predictor], images, [create_ranker("consensus"), create_ranker("im")], progress=False
    )
    # guard pass + cte-ei (clean, perturbed) + im, one batch each: im is not run twice.
    assert passes_alone == len(calls) == 4
    assert both.rankers == ["consensus", "im", "cte-ei[gauss]"]
    assert both.scores("im") == alone.scores("im")
    assert both.scores("consensus") == alone.scores("consensus")


def test_consensus_scores_do_not_depend_on_other_requested_rankers() -> None:
    """A cte-ei with other strengths has the label of the consensus component (cte-ei[gauss]);
    the consensus must still use its own component (or refuse the ambiguous pair)."""
    base = np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32)
    images = TargetImages.from_array(np.kron(base, np.ones((1, 1, 4, 4), np.float32)))

    def sharp(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(50 * batch[:, :1])
        return torch.cat([1 - fg, fg], dim=1)

    def smooth(batch: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid(8 * torch.nn.functional.avg_pool2d(batch[:, :1], 9, 1, 4))
        return torch.cat([1 - fg, fg], dim=1)

    models = [Predictor.from_function(sharp, "sharp"), Predictor.from_function(smooth, "smooth")]
    alone = rank_models(models, images, [create_ranker("consensus")], progress=False)
    strong = create_ranker("cte-ei", low=3.0, high=4.0)
    try:
        both = rank_models(models, images, [create_ranker("consensus"), strong], progress=False)
    except ConfigError:
        return  # refusing two different rankers with one label is a fix too
    assert both.scores("consensus") == alone.scores("consensus")


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
