"""Recipe schema and loading."""

from alframe.config.loading import (
    apply_overrides,
    dump_recipe,
    expand_path,
    load_recipe,
    parse_override,
    recipe_from_dict,
    recipe_to_dict,
)
from alframe.config.schema import (
    AugmentConfig,
    AugmentStep,
    DataConfig,
    DatasetConfig,
    ModelConfig,
    NormalizationConfig,
    Recipe,
    SplitConfig,
    SubsetRef,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "AugmentConfig",
    "AugmentStep",
    "DataConfig",
    "DatasetConfig",
    "ModelConfig",
    "NormalizationConfig",
    "Recipe",
    "SplitConfig",
    "SubsetRef",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_recipe",
    "expand_path",
    "load_recipe",
    "parse_override",
    "recipe_from_dict",
    "recipe_to_dict",
]
