"""Transferability scores as pure NumPy / scikit-learn functions of features and labels.

Every function takes the target features ``X`` (N, D) of one candidate model and the target
labels ``y`` (N,) (integers; any values, relabelled internally) and returns one float, higher
meaning "expected to fine-tune better". LEEP additionally needs the source model's classifier
outputs on the target images. Nothing here imports torch.

References (formulas re-derived from the papers; no code was copied):

- LP: Juodelyte et al., "On dataset transferability in medical image classification",
  arXiv 2412.20172 (the LP half of LP·FU).
- LogME: You et al., "LogME: Practical assessment of pre-trained models for transfer
  learning", ICML 2021.
- LEEP: Nguyen et al., "LEEP: A new measure to evaluate transferability of learned
  representations", ICML 2020.
- NLEEP: Li et al., "Ranking neural checkpoints", CVPR 2021.
- SFDA: Shao et al., "Not all models are equal: predicting model transferability in a
  self-challenging Fisher space", ECCV 2022.
- PARC: Bolya et al., "Scalable diverse model selection for accessible transfer learning",
  NeurIPS 2021.
- NCTI: Wang et al., "How far pre-trained models are from neural collapse on the target dataset
  informs their transferability", ICCV 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from alframe.errors import DataError

# ----------------------------------------------------------------------------------------------
# Input checking and small helpers


def check_features_labels(
    features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert one candidate's target features and labels.

    Args:
        features: (N, D) real array.
        labels: (N,) class labels (any hashable values that NumPy can sort).

    Returns:
        ``(X, y)``: X as float64 (N, D); y as int64 (N,) relabelled to 0..C-1 in sorted order.

    Raises:
        DataError: wrong shapes, non-finite features, fewer than 2 samples or fewer than 2
            classes.
    """
    x = np.asarray(features)
    y_raw = np.asarray(labels)
    if x.ndim != 2:
        raise DataError(f"features must be an (N, D) array, got shape {x.shape}")
    if y_raw.ndim != 1 or y_raw.shape[0] != x.shape[0]:
        raise DataError(
            f"labels must be an (N,) array matching {x.shape[0]} feature rows, got shape "
            f"{y_raw.shape}"
        )
    if x.shape[0] < 2:
        raise DataError(
            f"a transferability score needs at least 2 target samples, got {x.shape[0]}"
        )
    x = x.astype(np.float64, copy=False)
    if not np.all(np.isfinite(x)):
        raise DataError("features contain NaN or infinite values; check the candidate model")
    _, y = np.unique(y_raw, return_inverse=True)
    if y.max() < 1:
        raise DataError(
            "the target has a single class; transferability needs at least 2 labelled classes"
        )
    return x, y.astype(np.int64)


def one_hot(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(N,) integer labels 0..C-1 → (N, C) float64 one-hot matrix."""
    y = np.asarray(labels, dtype=np.int64)
    c = int(y.max()) + 1 if num_classes is None else num_classes
    out = np.zeros((y.shape[0], c), dtype=np.float64)
    out[np.arange(y.shape[0]), y] = 1.0
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits (numerically stable), float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def minmax_normalize(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Min-max normalise scores over a candidate pool to [0, 1].

    A constant pool (or a single candidate) maps to 0.5 everywhere: no candidate is preferred.
    NaN entries stay NaN and are ignored when finding the range.

    Args:
        values: (M,) one score per candidate.

    Returns:
        (M,) float64 in [0, 1] (or NaN).
    """
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.full_like(v, np.nan)
    low, high = float(finite.min()), float(finite.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return np.where(np.isfinite(v), 0.5, np.nan)
    return (v - low) / (high - low)


def _pca(x: np.ndarray, n_components: float | int) -> np.ndarray:
    from sklearn.decomposition import PCA

    if isinstance(n_components, int):
        n_components = max(1, min(n_components, x.shape[0], x.shape[1]))
    return np.asarray(PCA(n_components=n_components, svd_solver="full").fit_transform(x))


# ----------------------------------------------------------------------------------------------
# LP: NCA + kNN label probability


def lp_score(
    features: np.ndarray,
    labels: np.ndarray,
    n_components: int = 50,
    n_neighbors: int = 5,
    leave_one_out: bool = False,
    random_state: int = 42,
    max_iter: int = 50,
) -> float:
    """LP (label probability): mean kNN probability of the true class in an NCA embedding.

    X is projected with sklearn's NeighborhoodComponentsAnalysis to
    ``min(n_components, D, N)`` dimensions (``random_state`` fixed, as in the paper), then a
    ``n_neighbors``-NN classifier with uniform weights gives each sample a class distribution;
    LP is the mean probability of the true class.

    With ``leave_one_out=False`` (the paper's protocol) the neighbours are searched among all
    samples including the query itself (resubstitution: a sample is its own nearest neighbour,
    so LP ≥ 1/k on every sample). With ``leave_one_out=True`` the query is excluded from its own
    neighbours (the NCA projection is still fitted on all samples), which does not reward
    memorisation; on pure noise it is lower than resubstitution.

    Args:
        features: (N, D) penultimate features of one candidate on the target.
        labels: (N,) target labels.
        n_components: NCA output dimension (50 in the paper), capped at D and N.
        n_neighbors: k of the kNN (5 in the paper), capped at the available neighbours.
        leave_one_out: exclude each sample from its own neighbours.
        random_state: NCA initialisation seed (42 in the paper).
        max_iter: NCA optimisation iterations (sklearn's default 50).

    Returns:
        LP in [0, 1].
    """
    from sklearn.neighbors import NearestNeighbors, NeighborhoodComponentsAnalysis

    x, y = check_features_labels(features, labels)
    n, d = x.shape
    dims = max(1, min(n_components, d, n))
    nca = NeighborhoodComponentsAnalysis(
        n_components=dims, random_state=random_state, max_iter=max_iter
    )
    z = nca.fit_transform(x, y)
    available = n - 1 if leave_one_out else n
    k = max(1, min(n_neighbors, available))
    index = NearestNeighbors(n_neighbors=min(n, k + (1 if leave_one_out else 0))).fit(z)
    _, neighbours = index.kneighbors(z)
    if leave_one_out:
        rows = []
        for i in range(n):
            others = neighbours[i][neighbours[i] != i]
            rows.append(others[:k])
        neighbours = np.stack(rows)
    else:
        neighbours = neighbours[:, :k]
    hits = (y[neighbours] == y[:, None]).mean(axis=1)
    return float(hits.mean())


# ----------------------------------------------------------------------------------------------
# LogME


_LOGME_CAP = 1e10


def _logme_one_target(
    u: np.ndarray, sigma2: np.ndarray, d: int, target: np.ndarray, max_iter: int, tol: float
) -> float:
    """Maximised log evidence of one regression target (see :func:`logme_score`)."""
    n = target.shape[0]
    proj = u.T @ target  # (r,) coordinates of y on the left singular vectors
    proj2 = proj**2
    outside = float(target @ target - proj2.sum())  # part of y outside the feature span
    outside = max(outside, 0.0)
    rank = sigma2.shape[0]
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        denom = alpha + beta * sigma2
        gamma = float((beta * sigma2 / denom).sum())
        m2 = float((beta**2 * sigma2 * proj2 / denom**2).sum())
        residual = float((alpha**2 * proj2 / denom**2).sum()) + outside
        # Clamped: with D ≥ N the fit can become exact (γ → N, residual → 0).
        # β is capped (noise std ≥ 1e-5) for the same reason: an exact fit has unbounded evidence.
        new_alpha = min(max(gamma, 1e-12) / max(m2, 1e-300), _LOGME_CAP)
        new_beta = min(max(n - gamma, 1e-12) / max(residual, 1e-300), _LOGME_CAP)
        converged = abs(new_alpha / new_beta - alpha / beta) <= tol * abs(alpha / beta)
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    denom = alpha + beta * sigma2
    m2 = float((beta**2 * sigma2 * proj2 / denom**2).sum())
    residual = float((alpha**2 * proj2 / denom**2).sum()) + outside
    logdet_a = float(np.log(denom).sum()) + (d - rank) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * math.log(2.0 * math.pi)
        - 0.5 * beta * residual
        - 0.5 * alpha * m2
        - 0.5 * logdet_a
    )
    return evidence / n


def logme_score(
    features: np.ndarray, labels: np.ndarray, max_iter: int = 100, tol: float = 1e-6
) -> float:
    """LogME: maximum log marginal evidence of a Bayesian linear model, per sample.

    For each class c a Bayesian linear regression ``y_c = F w + ε`` with prior
    ``w ~ N(0, α⁻¹ I)`` and noise ``ε ~ N(0, β⁻¹)`` is fitted to the one-vs-rest target
    ``y_c ∈ {0, 1}^N`` by the MacKay fixed-point iteration (start α = β = 1)::

        A = α I + β FᵀF,   m = β A⁻¹ Fᵀ y,   γ = Σ_i β σ_i² / (α + β σ_i²)
        α ← γ / mᵀm,       β ← (N − γ) / ‖F m − y‖²

    until α/β changes by less than ``tol`` (relative). The log evidence at the optimum is::

        L = N/2 log β + D/2 log α − N/2 log 2π − β/2 ‖F m − y‖² − α/2 mᵀm − 1/2 log |A|

    and LogME is the mean over classes of ``L / N``. α and β are capped at 1e10: when D ≥ N the
    one-vs-rest targets can be fitted exactly and the evidence would otherwise grow without bound. Everything is evaluated through one
    economy SVD ``F = U Σ Vᵀ`` (σ_i the singular values), so D > N costs nothing extra.

    Args:
        features: (N, D) features (used as they are, no centring, as in the paper).
        labels: (N,) target labels.
        max_iter: fixed-point iterations at most.
        tol: relative tolerance on α/β.

    Returns:
        LogME (a log-likelihood per sample; higher is better).
    """
    x, y = check_features_labels(features, labels)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    keep = s > s.max() * 1e-10 if s.size else s.astype(bool)
    u, sigma2 = u[:, keep], s[keep] ** 2
    targets = one_hot(y)
    values = [
        _logme_one_target(u, sigma2, x.shape[1], targets[:, c], max_iter, tol)
        for c in range(targets.shape[1])
    ]
    return float(np.mean(values))


# ----------------------------------------------------------------------------------------------
# LEEP and NLEEP


def leep_from_probabilities(source_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP given the source model's class distribution θ(x) on each target sample.

    Empirical joint ``P(y, z) = 1/N Σ_{i: y_i = y} θ(x_i)_z``, conditional
    ``P(y | z) = P(y, z) / P(z)``; LEEP = ``1/N Σ_i log Σ_z P(y_i | z) θ(x_i)_z``.

    Args:
        source_probabilities: (N, Z) rows summing to 1.
        labels: (N,) target labels.

    Returns:
        LEEP (≤ 0; higher is better).
    """
    theta, y = check_features_labels(source_probabilities, labels)
    if np.any(theta < -1e-9) or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-5):
        raise DataError("source probabilities must be non-negative rows summing to 1")
    n = theta.shape[0]
    joint = one_hot(y).T @ theta / n  # (C, Z)
    marginal = joint.sum(axis=0, keepdims=True)  # (1, Z)
    conditional = joint / np.maximum(marginal, 1e-300)
    expected = theta @ conditional.T  # (N, C): P(y | x) through the dummy classifier
    return float(np.mean(np.log(np.maximum(expected[np.arange(n), y], 1e-300))))


def leep_score(source_logits: np.ndarray, labels: np.ndarray) -> float:
    """LEEP from the source classifier's logits (softmax applied here); see
    :func:`leep_from_probabilities`.

    Args:
        source_logits: (N, Z) logits of the source model's own head on the target images.
        labels: (N,) target labels.
    """
    return leep_from_probabilities(softmax(np.asarray(source_logits, dtype=np.float64)), labels)


def nleep_score(
    features: np.ndarray,
    labels: np.ndarray,
    variance: float = 0.8,
    components_per_class: int = 5,
    covariance_type: str = "full",
    reg_covar: float = 1e-4,
    random_state: int = 0,
) -> float:
    """N-LEEP: LEEP with a Gaussian mixture on the features standing in for the source head.

    The features are reduced by PCA to the components that explain ``variance`` (80 %) of the
    variance; a Gaussian mixture with ``components_per_class · C`` components (at most N) is
    fitted to them; its posteriors play the role of θ(x) in LEEP. This follows Li et al.
    (CVPR 2021) including the logarithm of LEEP's expected empirical prediction — the seed
    code of the LP·FU paper leaves the logarithm out; we follow the original paper.

    Args:
        features: (N, D) features.
        labels: (N,) target labels.
        variance: fraction of variance kept by PCA.
        components_per_class: mixture components per target class.
        covariance_type: sklearn GaussianMixture covariance type.
        reg_covar: covariance regulariser (few samples per component need it).
        random_state: mixture initialisation seed.

    Returns:
        N-LEEP (≤ 0; higher is better).
    """
    from sklearn.mixture import GaussianMixture

    x, y = check_features_labels(features, labels)
    reduced = _pca(x, variance) if x.shape[1] > 1 else x
    n_classes = int(y.max()) + 1
    components = max(1, min(components_per_class * n_classes, x.shape[0]))
    gmm = GaussianMixture(
        n_components=components,
        covariance_type=covariance_type,
        reg_covar=reg_covar,
        random_state=random_state,
    )
    gmm.fit(reduced)
    return leep_from_probabilities(gmm.predict_proba(reduced), y)


# ----------------------------------------------------------------------------------------------
# SFDA


def _regularised_fda(
    x: np.ndarray, y: np.ndarray, n_classes: int, shrink_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the regularised Fisher projection and return ``(projection (D, K), means (C, K))``."""
    import scipy.linalg

    d = x.shape[1]
    mean = x.mean(axis=0)
    means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    priors = np.bincount(y, minlength=n_classes) / y.shape[0]
    within = np.zeros((d, d))
    for c in range(n_classes):
        centred = x[y == c] - means[c]
        within += priors[c] * (centred.T @ centred) / max(1, centred.shape[0])
    diff = means - mean
    between = (diff.T * priors) @ diff
    largest = float(np.linalg.eigvalsh(between)[-1])
    lam = math.exp(-shrink_scale * largest)
    regular = (1.0 - lam) * within + lam * np.eye(d)
    # λ vanishes when S_B is large; with D ≥ N the within-class scatter is then singular. A
    # numerical ridge (1e-6 of its mean variance) keeps the generalised eigenproblem solvable.
    regular += (1e-6 * float(np.trace(within)) / d + 1e-12) * np.eye(d)
    values, vectors = scipy.linalg.eigh(between, regular)
    k = max(1, min(n_classes - 1, d))
    projection = vectors[:, np.argsort(values)[::-1][:k]]
    return projection, means @ projection


def _fda_posteriors(z: np.ndarray, class_means: np.ndarray, priors: np.ndarray) -> np.ndarray:
    # Gaussian classifier with a shared identity covariance in the Fisher space.
    logits = (
        z @ class_means.T - 0.5 * (class_means**2).sum(axis=1) + np.log(np.maximum(priors, 1e-300))
    )
    return softmax(logits)


def sfda_score(features: np.ndarray, labels: np.ndarray, shrink_scale: float = 1.0) -> float:
    """SFDA: class separability in a regularised, self-challenged Fisher space.

    1. Regularised FDA: between-class scatter S_B, within-class scatter S_W; shrinkage
       λ = exp(−a · σ_max(S_B)) (a = ``shrink_scale``); the projection U solves
       S_B u = η ((1 − λ) S_W + λ I) u, keeping the C − 1 leading directions (a 1e-6 relative
       ridge keeps the right-hand matrix positive definite when D ≥ N and λ ≈ 0).
    2. A Bayes classifier in the projected space (class means, shared identity covariance,
       class priors) gives p(c | x).
    3. ConfMix (self-challenging): each sample is pulled towards the projected mean of its most
       confusing wrong class by its lack of confidence, ``x̂ = p_y x + (1 − p_y) μ_c*`` with
       ``p_y = p(y | x)`` and ``c* = argmax_{c ≠ y} p(c | x)``; hard samples move most.
    4. The Fisher projection and classifier are refitted on the challenged features; SFDA is the
       mean posterior of the true class of the challenged samples.

    Everything is in-sample, as in the paper: with D ≥ N (e.g. 512-d features of 240 target
    images) the within-class scatter is singular, λ is tiny for well-spread features, and the
    Fisher direction can separate any labelling — SFDA then saturates near 1 for every
    candidate. Prefer it when N is well above D.

    Args:
        features: (N, D) features.
        labels: (N,) target labels.
        shrink_scale: the a of the shrinkage λ = exp(−a σ_max(S_B)).

    Returns:
        SFDA in [0, 1] (higher is better).
    """
    x, y = check_features_labels(features, labels)
    n_classes = int(y.max()) + 1
    priors = np.bincount(y, minlength=n_classes) / y.shape[0]
    projection, class_means = _regularised_fda(x, y, n_classes, shrink_scale)
    z = x @ projection
    posterior = _fda_posteriors(z, class_means, priors)
    rows = np.arange(y.shape[0])
    confidence = posterior[rows, y]
    wrong = posterior.copy()
    wrong[rows, y] = -np.inf
    confusing = wrong.argmax(axis=1)
    # Mix in the original feature space so that the refit sees the challenged samples.
    raw_means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    mixed = confidence[:, None] * x + (1.0 - confidence[:, None]) * raw_means[confusing]
    projection, class_means = _regularised_fda(mixed, y, n_classes, shrink_scale)
    posterior = _fda_posteriors(mixed @ projection, class_means, priors)
    return float(posterior[rows, y].mean())


# ----------------------------------------------------------------------------------------------
# PARC


def parc_score(features: np.ndarray, labels: np.ndarray, n_components: int = 32) -> float:
    """PARC: Spearman correlation between the feature and label dissimilarity matrices.

    Features are reduced by PCA to ``n_components`` (32) dimensions; the representation
    dissimilarity matrices are ``1 − Pearson correlation`` between samples, of the reduced
    features and of the one-hot labels; PARC is 100 × the Spearman correlation of their upper
    triangles.

    Args:
        features: (N, D) features.
        labels: (N,) target labels.
        n_components: PCA dimensions (capped at N and D).

    Returns:
        PARC in [−100, 100] (higher is better).
    """
    from scipy.stats import spearmanr

    x, y = check_features_labels(features, labels)
    reduced = _pca(x, n_components) if x.shape[1] > 1 else x
    if reduced.shape[1] < 2:
        # A correlation between samples needs at least two coordinates.
        reduced = np.concatenate([reduced, np.zeros_like(reduced)], axis=1)
    feature_rdm = 1.0 - np.corrcoef(reduced)
    label_rdm = 1.0 - np.corrcoef(one_hot(y))
    upper = np.triu_indices(x.shape[0], k=1)
    a = np.nan_to_num(feature_rdm[upper], nan=1.0)
    b = label_rdm[upper]
    rho = spearmanr(a, b).statistic
    return float(100.0 * rho) if np.isfinite(rho) else 0.0


# ----------------------------------------------------------------------------------------------
# NCTI


def ncti_terms(
    features: np.ndarray, labels: np.ndarray, n_components: int = 64
) -> dict[str, float]:
    """The three neural-collapse terms of NCTI for one candidate (before pool normalisation).

    Features are centred and reduced by PCA to ``n_components`` dimensions (at most N − 1 and
    D). With class means μ_c, global mean μ, within-class covariance Σ_W and between-class
    covariance Σ_B:

    - ``variability``: within-class variability collapse, ``−log(tr(Σ_W Σ_B⁺) / C)`` (the
      NC1 statistic, negated so that more collapse scores higher).
    - ``etf``: closeness of the centred, normalised class means to a simplex equiangular tight
      frame, ``−‖M̄ᵀM̄/‖M̄ᵀM̄‖_F − (I − 11ᵀ/C)/‖I − 11ᵀ/C‖_F‖_F`` (NC2, negated).
    - ``ncc``: log-likelihood of the nearest-class-centre classifier,
      ``1/N Σ_i log softmax_c(−‖x_i − μ_c‖²)_{y_i}``. It enters NCTI with a plus sign as in
      the paper (the LP·FU seed code subtracts it); a more accurate nearest-centre rule means
      closer to neural collapse.

    Args:
        features: (N, D) features.
        labels: (N,) target labels.
        n_components: PCA dimensions.

    Returns:
        ``{"variability": ..., "etf": ..., "ncc": ...}``.
    """
    x, y = check_features_labels(features, labels)
    reduced = _pca(x, min(n_components, x.shape[0] - 1)) if x.shape[1] > 1 else x - x.mean(0)
    # Scale-free: the features' overall scale must not change the NCC term.
    scale = float(np.sqrt((reduced**2).sum(axis=1).mean())) or 1.0
    z = reduced / scale
    n_classes = int(y.max()) + 1
    mean = z.mean(axis=0)
    means = np.stack([z[y == c].mean(axis=0) for c in range(n_classes)])
    within = np.zeros((z.shape[1], z.shape[1]))
    for c in range(n_classes):
        centred = z[y == c] - means[c]
        within += centred.T @ centred
    within /= z.shape[0]
    centred_means = means - mean
    between = centred_means.T @ centred_means / n_classes
    nc1 = float(np.trace(within @ np.linalg.pinv(between, rcond=1e-10))) / n_classes
    gram = centred_means @ centred_means.T
    etf = np.eye(n_classes) - np.ones((n_classes, n_classes)) / n_classes
    gram_norm = float(np.linalg.norm(gram)) or 1.0
    nc2 = float(np.linalg.norm(gram / gram_norm - etf / np.linalg.norm(etf)))
    sq_dist = ((z[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    # log softmax(−d) with a stable logsumexp
    shift = (-sq_dist).max(axis=1, keepdims=True)
    log_post = -sq_dist - (shift + np.log(np.exp(-sq_dist - shift).sum(axis=1, keepdims=True)))
    ncc = float(log_post[np.arange(z.shape[0]), y].mean())
    return {"variability": -math.log(max(nc1, 1e-300)), "etf": -nc2, "ncc": ncc}


def ncti_combine(terms: Sequence[dict[str, float]]) -> np.ndarray:
    """NCTI over a candidate pool: the sum of the three min-max normalised terms.

    Args:
        terms: one :func:`ncti_terms` dict per candidate.

    Returns:
        (M,) NCTI per candidate in [0, 3].
    """
    total = np.zeros(len(terms))
    for key in ("variability", "etf", "ncc"):
        total += minmax_normalize([t[key] for t in terms])
    return total


# ----------------------------------------------------------------------------------------------
# LP · FU


def lpfu_combine(
    lp: Sequence[float] | np.ndarray, fu: Sequence[float] | np.ndarray, natural_source: bool = False
) -> np.ndarray:
    """Combine LP and FU over a candidate pool: ``LP̃ · FŨ`` (min-max normalised).

    Args:
        lp: (M,) LP per candidate.
        fu: (M,) FU per candidate.
        natural_source: use ``(1 − LP̃)(1 − FŨ)``, the paper's variant for natural-image
            (ImageNet) source pools. Never chosen automatically.

    Returns:
        (M,) combined score, higher is better.
    """
    lp_n, fu_n = minmax_normalize(lp), minmax_normalize(fu)
    if natural_source:
        return np.asarray((1.0 - lp_n) * (1.0 - fu_n))
    return np.asarray(lp_n * fu_n)


# ----------------------------------------------------------------------------------------------
# Evaluation


def weighted_tau(
    scores: Sequence[float] | np.ndarray, performance: Sequence[float] | np.ndarray
) -> float:
    """Weighted Kendall τ (scipy.stats.weightedtau, hyperbolic weights) of scores vs truth.

    Args:
        scores: (M,) transferability scores (higher = predicted better).
        performance: (M,) fine-tuned performance of the same candidates.

    Returns:
        τ_w in [−1, 1]; NaN when fewer than 2 candidates have finite values.
    """
    from scipy.stats import weightedtau

    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(performance, dtype=np.float64)
    if s.shape != p.shape:
        raise DataError(f"scores {s.shape} and performance {p.shape} differ in length")
    ok = np.isfinite(s) & np.isfinite(p)
    if ok.sum() < 2:
        return float("nan")
    return float(weightedtau(s[ok], p[ok]).statistic)
