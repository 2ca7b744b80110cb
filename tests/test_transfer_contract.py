"""Every registered transferability score goes through the same checks."""

from __future__ import annotations

import numpy as np
import pytest

from alframe.errors import ConfigError, DataError
from alframe.transfer import REQUIREMENTS, TRANSFER_SCORES, TransferInputs, parse_score_names
from alframe.transfer.pipeline import CandidateInputs, score_pool


def _inputs(seed: int, separable: bool) -> TransferInputs:
    rng = np.random.default_rng(seed)
    y = np.arange(60) % 3
    noise = rng.normal(size=(60, 10))
    features = noise + (4.0 * np.eye(10)[y] if separable else 0.0)
    logits = rng.normal(size=(60, 6)) + (5.0 * np.eye(6)[y] if separable else 0.0)
    return TransferInputs(
        labels=y,
        features=features.astype(np.float32),
        source_logits=logits,
        gradient_ratio=2.0 if separable else 1.0,
    )


@pytest.mark.parametrize("name", TRANSFER_SCORES.names())
def test_score_contract(name: str) -> None:
    cls = TRANSFER_SCORES.get(name)
    score = TRANSFER_SCORES.create(name)
    assert score.requires and score.requires <= REQUIREMENTS
    good, bad = _inputs(0, True), _inputs(1, False)
    first = score.compute(good)
    assert np.isfinite(first.value)
    assert score.compute(good) == first  # deterministic
    pooled = score.pool([score.compute(good), score.compute(bad)])
    assert pooled.shape == (2,) and np.all(np.isfinite(pooled))
    assert pooled[0] > pooled[1], f"{name} must prefer the separable candidate"
    # A missing requirement is a DataError naming it, never a crash.
    empty = TransferInputs(labels=good.labels)
    with pytest.raises(DataError):
        score.compute(empty)
    assert cls.__doc__


def test_pool_marks_inapplicable_scores_nan_and_orders_best_first() -> None:
    no_head = TransferInputs(
        labels=_inputs(2, True).labels, features=_inputs(2, True).features, gradient_ratio=1.5
    )
    candidates = [
        CandidateInputs("bad", _inputs(1, False)),
        CandidateInputs("good", _inputs(0, True)),
        CandidateInputs("headless", no_head),
    ]
    ranking = score_pool(candidates, ["logme", "leep"])
    assert np.isnan(ranking.scores["leep"][2])
    assert ranking.names[ranking.order[0]] in {"good", "headless"}
    assert ranking.names[ranking.order[-1]] == "bad"
    taus = ranking.tau({"bad": 0.1, "good": 0.9, "headless": 0.8})
    assert taus["logme"] > 0
    with pytest.raises(DataError, match="no performance for"):
        ranking.tau({"bad": 0.1})


def test_score_names_are_validated() -> None:
    assert parse_score_names("all")[0] == "lpfu"
    assert sorted(parse_score_names("all")) == TRANSFER_SCORES.names()
    assert parse_score_names("LPFU, logme") == ["lpfu", "logme"]
    with pytest.raises(ConfigError, match=r"(?i)did you mean 'logme'"):
        parse_score_names("logmee")
