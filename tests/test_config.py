"""Recipe schema, loading and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from alframe.config import (
    apply_overrides,
    dump_recipe,
    expand_path,
    load_recipe,
    parse_override,
    recipe_from_dict,
)
from alframe.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CXR_RECIPE = REPO / "recipes" / "cxr_montgomery_to_shenzhen.yaml"


def minimal() -> dict:
    return {
        "name": "t",
        "data": {
            "datasets": {"a": {"path": "a"}},
            "train": {"dataset": "a"},
        },
    }


def test_shipped_recipe_is_valid() -> None:
    recipe = load_recipe(CXR_RECIPE)
    assert recipe.data.train.dataset == "shenzhen"
    assert set(recipe.data.evaluate) == {"shenzhen_test", "montgomery"}
    assert recipe.num_classes == 2


def test_overrides_are_typed_and_nested() -> None:
    recipe = load_recipe(
        CXR_RECIPE,
        [
            "train.max_epochs=3",
            "data.image_size=[128, 128]",
            "train.lr=0.01",
            "model.encoder_weights=null",
        ],
    )
    assert recipe.train.max_epochs == 3
    assert recipe.data.image_size == (128, 128)
    assert recipe.train.lr == pytest.approx(0.01)
    assert recipe.model.encoder_weights is None


def test_override_can_add_free_form_keys() -> None:
    raw = apply_overrides(
        minimal(), ["data.datasets.b.path=b", "model.extra.decoder_attention_type=scse"]
    )
    recipe = recipe_from_dict(raw)
    assert recipe.data.datasets["b"].path == "b"
    assert recipe.model.extra == {"decoder_attention_type": "scse"}


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.max_epoch=3", "did you mean max_epochs"),
        ("trian.lr=1", "did you mean train"),
        ("nokey", "expected KEY=VALUE"),
        ("=3", "the key is empty"),
    ],
)
def test_bad_override_names_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        apply_overrides(minimal(), [override])


@pytest.mark.parametrize(
    ("patch", "key", "needle"),
    [
        ({"train": {"lr": "fast"}}, "train.lr = 'fast'", "valid number"),
        ({"train": {"batch_size": 0}}, "train.batch_size = 0", "greater than or equal to 1"),
        ({"model": {"colour": "red"}}, "model.colour = 'red'", "unknown key"),
        ({"data": {"image_size": [100, 100]}}, "data.image_size", "multiples of 32"),
        ({"data": {"classes": {"bg": 0}}}, "data.classes", "at least two classes"),
        ({"data": {"train": {"dataset": "zzz"}}}, "data", "'zzz' is not one of data.datasets"),
        ({"name": "has space"}, "name = 'has space'", "pattern"),
    ],
)
def test_schema_errors_name_key_value_and_expectation(patch: dict, key: str, needle: str) -> None:
    raw = minimal()
    for section, values in patch.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    with pytest.raises(ConfigError) as info:
        recipe_from_dict(raw, "r.yaml")
    message = str(info.value)
    assert message.startswith("recipe r.yaml: ")
    assert key in message
    assert needle in message


def test_missing_required_key() -> None:
    raw = minimal()
    del raw["data"]["train"]
    with pytest.raises(ConfigError, match=r"data\.train: required key is missing"):
        recipe_from_dict(raw)


def test_split_fractions_must_sum_to_one() -> None:
    raw = minimal()
    raw["data"]["datasets"]["a"]["split"] = {
        "kind": "random",
        "fractions": {"train": 0.5, "test": 0.2},
    }
    with pytest.raises(ConfigError, match="sum to 1"):
        recipe_from_dict(raw)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_recipe(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_recipe(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_recipe(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_recipe(scalar)


def test_dump_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(CXR_RECIPE, ["train.max_epochs=2"])
    again = recipe_from_dict(yaml.safe_load(dump_recipe(recipe)))
    assert again == recipe


def test_parse_override_values() -> None:
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=hello world") == (["a"], "hello world")


def test_expand_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALFRAME_DATA", str(tmp_path))
    assert expand_path("${ALFRAME_DATA}/cxr_lungs") == tmp_path / "cxr_lungs"
    assert expand_path("sub", base=tmp_path) == tmp_path / "sub"
    monkeypatch.delenv("ALFRAME_DATA")
    with pytest.raises(ConfigError, match=r"ALFRAME_DATA.*not set"):
        expand_path("${ALFRAME_DATA}/x")


def test_recipe_reference_is_current() -> None:
    from alframe.config.reference import recipe_reference

    text = (REPO / "docs" / "recipes.md").read_text()
    assert text == recipe_reference(), (
        "regenerate: python -m alframe.config.reference > docs/recipes.md"
    )
    assert "`data.datasets.<name>`" in text and "`train`" in text
