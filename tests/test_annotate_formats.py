"""Pure pieces of labelling rounds: brush RLE, polygons, value mapping, assignment, agreement."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from test_annotate_support import encode_brush_rle

from alframe.annotate import STORED_IGNORE, assign_annotators, decode_brush_rle, dice_agreement
from alframe.annotate.formats import brush_mask, labelstudio_labels, polygon_mask, to_class_indices
from alframe.annotate.project import case_names, default_ignore_value
from alframe.errors import DataError


@pytest.mark.parametrize("seed", range(4))
def test_brush_rle_round_trip(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(5, 70, size=2)
    # Blobs (long runs) plus speckle (literal chunks) exercise both chunk kinds.
    region = np.zeros((height, width), dtype=bool)
    region[height // 4 : height // 2, width // 3 :] = True
    region ^= rng.random((height, width)) < 0.05
    flat = np.repeat((region.astype(np.uint8) * 255).ravel(), 4)
    decoded = decode_brush_rle(encode_brush_rle(flat))
    np.testing.assert_array_equal(decoded, flat)
    np.testing.assert_array_equal(brush_mask(encode_brush_rle(flat), height, width, "t"), region)


def test_brush_rle_long_runs_and_arbitrary_bytes() -> None:
    values = np.concatenate([np.zeros(70000), np.arange(256), np.full(300, 7)]).astype(np.int64)
    np.testing.assert_array_equal(decode_brush_rle(encode_brush_rle(values)), values)


def test_brush_rle_truncated_is_a_data_error() -> None:
    rle = encode_brush_rle(np.repeat(np.arange(50) % 3, 4))
    with pytest.raises(DataError, match="truncated or damaged"):
        decode_brush_rle(rle[: len(rle) // 2])
    with pytest.raises(DataError, match="list of byte values"):
        decode_brush_rle([1, 2])


def test_polygon_mask_covers_the_square() -> None:
    mask = polygon_mask([[25, 25], [75, 25], [75, 75], [25, 75]], 40, 40, "t")
    assert mask[20, 20] and mask[11, 28] and not mask[5, 5] and not mask[35, 35]
    assert abs(int(mask.sum()) - 21 * 21) <= 2 * 21  # the boundary may be included


def test_labelstudio_later_regions_win_and_ignore_label() -> None:
    first = np.zeros((8, 8), dtype=bool)
    first[:, :4] = True
    second = np.zeros((8, 8), dtype=bool)
    second[:2, :] = True
    results = [
        {
            "type": "brushlabels",
            "value": {
                "rle": encode_brush_rle(np.repeat(first.ravel() * 255, 4)),
                "brushlabels": ["fg"],
            },
        },
        {
            "type": "brushlabels",
            "value": {
                "rle": encode_brush_rle(np.repeat(second.ravel() * 255, 4)),
                "brushlabels": ["Ignore"],
            },
        },
    ]
    lookup = {"fg": 1}

    def index(name: str, where: str) -> int:
        return STORED_IGNORE if name.lower() == "ignore" else lookup[name]

    labels = labelstudio_labels(results, 8, 8, index, 0, "t")
    assert (labels[:2] == STORED_IGNORE).all()
    assert (labels[2:, :4] == 1).all() and (labels[2:, 4:] == 0).all()


def test_to_class_indices_values_indices_ignore_and_mix() -> None:
    values = np.array([[0, 255], [254, 0]])
    out = to_class_indices(values, [0, 255], 254, "m")
    np.testing.assert_array_equal(out, [[0, 1], [STORED_IGNORE, 0]])
    np.testing.assert_array_equal(
        to_class_indices(np.array([[0, 1]]), [0, 255], 254, "m"), [[0, 1]]
    )
    np.testing.assert_array_equal(
        to_class_indices(np.array([[-1, 1]]), [0, 255], 254, "m"), [[STORED_IGNORE, 1]]
    )
    with pytest.raises(DataError, match="mixes class values"):
        to_class_indices(np.array([[0, 1, 255]]), [0, 255], 254, "m")
    with pytest.raises(DataError, match=r"values \[7\] are neither"):
        to_class_indices(np.array([[0, 7]]), [0, 255], 254, "m")


def test_assignment_is_balanced_seeded_and_overlapping() -> None:
    ids = [f"d/{k:02d}" for k in range(20)]
    names = ["a", "b", "c"]
    result = assign_annotators(ids, names, 0.25, [0, 1])
    primary = Counter(v[0] for v in result.values())
    assert max(primary.values()) - min(primary.values()) <= 1
    doubles = [v for v in result.values() if len(v) == 2]
    assert len(doubles) == 5 and all(v[0] != v[1] for v in doubles)
    assert assign_annotators(ids, names, 0.25, [0, 1]) == result
    assert assign_annotators(ids, names, 0.25, [0, 2]) != result
    assert all(len(v) == 1 for v in assign_annotators(ids, ["solo"], 0.5, 0).values())


def test_dice_agreement_against_a_naive_count() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 3, size=(16, 16)).astype(np.uint8)
    b = a.copy()
    b[rng.random((16, 16)) < 0.3] = 1
    b[0, :] = STORED_IGNORE
    scores = []
    for cls in (1, 2):
        inter = union = 0
        for i in range(1, 16):
            for j in range(16):
                inter += int(a[i, j] == cls and b[i, j] == cls)
                union += int(a[i, j] == cls) + int(b[i, j] == cls)
        scores.append(2 * inter / union)
    assert dice_agreement(a, b, 3) == pytest.approx(np.mean(scores))
    empty = np.zeros((4, 4), dtype=np.uint8)
    assert dice_agreement(empty, empty, 2) == 1.0


def test_case_names_are_safe_and_unique() -> None:
    names = case_names(["ds/a:0001", "ds/a_0001", "x/B", "x/b"])
    assert len(set(n.lower() for n in names.values())) == 4
    assert all("/" not in n and ":" not in n for n in names.values())
    assert names["ds/a:0001"].startswith("ds__a_0001")


def test_default_ignore_value_avoids_classes_and_indices() -> None:
    assert default_ignore_value([0, 1]) == 255
    assert default_ignore_value([0, 255]) == 254
