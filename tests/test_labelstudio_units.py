"""Label Studio pieces that need no server: brush RLE encoder, labelling config, effort."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score
from test_annotate_support import encode_brush_rle as reference_encode
from test_annotate_support import make_project, state_digest

from alframe.annotate import open_project
from alframe.annotate.formats import brush_mask, decode_brush_rle
from alframe.annotate.labelstudio import (
    _controls,
    brush_results,
    check_pre_annotate,
    class_colours,
    correction_effort,
    effort_metrics,
    encode_brush_rle,
    labelling_config,
)
from alframe.annotate.labelstudio_client import LabelStudioClient, LabelStudioError
from alframe.annotate.labelstudio_server import free_port
from alframe.cli.main import main
from alframe.errors import ConfigError, StateError


@pytest.mark.parametrize(
    "values",
    [
        np.zeros(0, dtype=np.uint8),
        np.array([7], dtype=np.uint8),
        np.array([1, 2, 3, 3, 3, 4, 5, 5], dtype=np.uint8),
        np.full(70_000, 255, dtype=np.uint8),  # one run longer than a 16-bit run field
        np.r_[np.zeros(65_537, dtype=np.uint8), [9]],  # a run of 65 536 + a lone value
        np.arange(70_000, dtype=np.int64) % 251,  # literals longer than one chunk
    ],
)
def test_rle_round_trip_and_matches_reference_decoding(values: np.ndarray) -> None:
    encoded = encode_brush_rle(values)
    assert all(0 <= b <= 255 for b in encoded)
    if values.size:
        np.testing.assert_array_equal(decode_brush_rle(encoded), values.astype(np.int64))
        # The independent encoder of the test helpers yields the same values.
        np.testing.assert_array_equal(
            decode_brush_rle(reference_encode(values)), decode_brush_rle(encoded)
        )
    else:
        assert encoded[:4] == [0, 0, 0, 0]


def test_rle_random_masks_round_trip() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        h, w = rng.integers(1, 40, size=2)
        labels = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        labels[rng.random((h, w)) < 0.5] = 0
        results = brush_results(labels, ["background", "a", "b"], "brush", "image")
        painted = np.zeros((h, w), dtype=np.uint8)
        for result in results:
            index = ["background", "a", "b"].index(result["value"]["brushlabels"][0])
            painted[brush_mask(result["value"]["rle"], int(h), int(w), "t")] = index
        np.testing.assert_array_equal(painted, labels)


def test_rle_refuses_non_bytes() -> None:
    with pytest.raises(ValueError):
        encode_brush_rle(np.array([256]))


def test_labelling_config_has_every_class_and_distinct_colours() -> None:
    names = ["background", "lung", "heart", *[f"c{k}" for k in range(20)]]
    config = labelling_config(names)
    root = ElementTree.fromstring(config)
    labels = {e.get("value"): e.get("background") for e in root.iter("Label")}
    assert set(labels) == {*names[1:], "ignore"}
    colours = [labels[n] for n in names[1:]]
    assert len(set(colours)) == len(colours)
    assert _controls(config, names, "x") == {
        "from_name": "brush",
        "to_name": "image",
        "data_key": "image",
    }
    assert len(set(class_colours(40))) == 40


def test_controls_refuse_a_config_without_the_classes() -> None:
    config = labelling_config(["background", "lung"])
    with pytest.raises(LabelStudioError, match="lack the classes heart"):
        _controls(config, ["background", "lung", "heart"], "project 3")
    with pytest.raises(LabelStudioError, match="no BrushLabels"):
        _controls('<View><Image name="i" value="$img"/></View>', ["background", "a"], "p")


def test_correction_effort_against_sklearn() -> None:
    pre = np.zeros((20, 30), dtype=np.uint8)
    final = np.zeros((20, 30), dtype=np.uint8)
    pre[2:12, 2:12] = 1  # 100 pixels
    final[4:14, 4:14] = 1  # 100 pixels, 64 shared
    changed, dice = correction_effort(pre, final, 2)
    assert changed == pytest.approx(72 / 600)
    assert dice == pytest.approx(f1_score(final.ravel(), pre.ravel()))
    assert dice == pytest.approx(2 * 64 / 200)
    assert correction_effort(final, final, 2) == (0.0, 1.0)


def test_effort_metrics_leave_out_unmeasured_values() -> None:
    stats = {
        "n": 2,
        "lead_time_mean": 3.0,
        "n_pre_annotated": 0,
        "lead_time_pre_mean": None,
        "lead_time_scratch_mean": 3.0,
        "changed_fraction_mean": None,
        "pre_dice_mean": None,
    }
    metrics = effort_metrics({**stats, "annotators": {"alice": stats}})
    assert metrics["effort.lead_time_mean"] == 3.0
    assert metrics["effort.alice.n"] == 2.0
    assert not any("pre_dice" in k for k in metrics)


def test_client_refuses_a_non_http_url() -> None:
    with pytest.raises(LabelStudioError, match="not an http"):
        LabelStudioClient("localhost:8080", "t")


# ------------------------------------------------ user errors that need no Label Studio server
def test_commands_on_an_unconnected_project_or_without_token_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = make_project(tmp_path, annotators=("alice",), overlap=0.0, budget=2)
    before = state_digest(project)
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    cases = [
        (["round", "sync", str(project)], "is not connected to Label Studio"),
        (["round", "push", str(project)], "is not connected to Label Studio"),
        (["project", "connect", str(project), "--label-studio", dead], "is not set"),
        (
            ["project", "connect", str(project), "--label-studio", dead, "--user", "x@y"],
            "expected LABEL_STUDIO_EMAIL_OR_USERNAME=ANNOTATOR",
        ),
        (
            ["project", "connect", str(project), "--label-studio", dead, "--user", "x@y=zed"],
            "'zed' is not an annotator",
        ),
        (["project", "connect", str(project), "--label-studio", "ftp://x"], "is not set"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("alframe: error: ") and "\n" not in err and needle in err, err
        assert state_digest(project) == before
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "0" * 40)
    assert main(["project", "connect", str(project), "--label-studio", "ftp://x"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
    assert main(["project", "connect", str(project), "--label-studio", dead]) == 2
    assert "cannot be reached" in capsys.readouterr().err
    assert state_digest(project) == before


def test_pre_annotation_modes_are_checked_before_selecting(tmp_path: Path) -> None:
    project = make_project(tmp_path, annotators=("alice",), overlap=0.0, budget=2)
    with open_project(project) as opened:
        check_pre_annotate(opened, "auto")
        check_pre_annotate(opened, "none")
        with pytest.raises(StateError, match="no model has been trained"):
            check_pre_annotate(opened, "model")
        with pytest.raises(StateError, match="no pseudo-labels are recorded"):
            check_pre_annotate(opened, "rpg")
        with pytest.raises(ConfigError, match="expected auto, model, rpg or none"):
            check_pre_annotate(opened, "bogus")
