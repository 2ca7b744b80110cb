"""Recipe schema: one YAML file describes data, model, training and tracking.

Every model forbids unknown keys so that a typo in a recipe is an error naming the key, not a
silently ignored setting. Paths inside ``data`` are relative to ``data.root``.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_DEVICE_NAME = re.compile(r"auto|all|cpu|gpu|cuda(:\d+)?")


def check_device_spelling(value: int | str | list[str]) -> int | str | list[str]:
    """Checks the spelling of a device request (``embed.devices``, ``--devices``, ...).

    Only the spelling: which devices exist is known on the machine
    (:func:`alframe.inference.hardware_for_devices` says so when one is missing).

    Args:
        value: a count, or a name (``auto``, ``all``, ``cpu``, ``gpu``, ``cuda``, ``cuda:N``)
            or several (comma-separated string or list).

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: a count below 1, an empty list or an unknown name (the message lists the
            accepted spellings).
    """
    if isinstance(value, bool):
        raise ValueError(f"devices must be a count, a device name or a list of them, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"a device count must be >= 1, got {value}")
        return value
    names = value.split(",") if isinstance(value, str) else value
    if not names:
        raise ValueError("an empty device list; use 'auto' or name at least one device")
    for name in names:
        if not isinstance(name, str) or not _DEVICE_NAME.fullmatch(name.strip().lower()):
            raise ValueError(
                f"unknown device {name!r}; use auto, all, a count, cpu, cuda, cuda:N or a list "
                "of them"
            )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NormalizationConfig(_Strict):
    """Intensity normalisation applied per image before augmentation-independent steps.

    ``minmax`` maps [min, max] to [0, 1]; ``percentile`` clips to the [low, high] percentiles and
    maps them to [0, 1] (robust to burnt-in labels and scanner borders); ``zscore`` subtracts the
    mean and divides by the standard deviation; ``none`` only divides 8-bit images by 255.
    """

    method: Literal["minmax", "percentile", "zscore", "none"] = "percentile"
    low: float = Field(0.5, ge=0.0, le=100.0, description="lower percentile (percentile method)")
    high: float = Field(99.5, ge=0.0, le=100.0, description="upper percentile (percentile method)")

    @model_validator(mode="after")
    def _ordered(self) -> NormalizationConfig:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class DatasetConfig(_Strict):
    """One source of images (and masks), e.g. one hospital or one public data set.

    ``folder``: ``<path>/<images>/`` and ``<path>/<masks>/`` with matching file stems (PNG, JPEG,
    TIFF). ``nifti``: ``<path>/<images>/*.nii[.gz]`` volumes read as 2-D slices along ``axis``;
    masks are volumes with the same file name.
    """

    kind: Literal["folder", "nifti"] = "folder"
    path: str = Field(..., description="folder of this data set, relative to data.root")
    images: str = "images"
    masks: str | None = Field("masks", description="mask sub-folder; null for unlabelled data")
    mask_format: Literal["binary", "semantic", "instance"] = Field(
        "binary",
        description=(
            "binary: {0,1} or {0,255}; semantic: integer values listed in data.classes; "
            "instance: integer instance ids, converted to foreground/background"
        ),
    )
    axis: int = Field(2, ge=0, le=2, description="slice axis for NIfTI volumes")
    split: SplitConfig | None = Field(None, description="how to split this data set")


class SplitConfig(_Strict):
    """How one data set is split into named parts (``train``, ``test``, ...).

    ``random``: seeded shuffle into ``fractions``; ``grouped``: the same, but all items of a group
    (e.g. the slices of one volume, or ids sharing ``group_pattern``) stay together; ``csv``: read
    from a file such as ``cxr_lungs/splits.csv`` with an id and a split column.
    """

    kind: Literal["random", "grouped", "csv"] = "random"
    fractions: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "test": 0.2})
    seed: int | None = Field(None, description="defaults to the recipe seed")
    group_pattern: str | None = Field(
        None, description="regex; its first group (or whole match) of an item id is the group"
    )
    csv: str | None = Field(None, description="CSV file relative to data.root (kind: csv)")
    id_column: str = "id"
    split_column: str = "source_split"
    filter: dict[str, str] = Field(
        default_factory=dict, description="keep CSV rows whose columns equal these values"
    )

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.kind == "csv" and not self.csv:
            raise ValueError("kind 'csv' needs 'csv: <file relative to data.root>'")
        if self.kind != "csv":
            if not self.fractions:
                raise ValueError(
                    "fractions must name at least one part, e.g. {train: 0.8, test: 0.2}"
                )
            if any(v <= 0 for v in self.fractions.values()):
                raise ValueError(f"fractions must be positive, got {self.fractions}")
            total = sum(self.fractions.values())
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"fractions must sum to 1, they sum to {total:g}")
        return self


DatasetConfig.model_rebuild()


class SubsetRef(_Strict):
    """A named data set, optionally restricted to one part of its split (``null`` = all items)."""

    dataset: str
    split: str | None = None


class DataConfig(_Strict):
    """Where the data lives and how every image is turned into a tensor."""

    root: str = Field(".", description="base folder; ${ALFRAME_DATA} and ~ are expanded")
    datasets: dict[str, DatasetConfig] = Field(..., description="named data sets (sites)")
    classes: dict[str, int] = Field(
        default_factory=lambda: {"background": 0, "foreground": 1},
        description="class name -> mask value, background first",
    )
    image_size: tuple[int, int] = Field((256, 256), description="(height, width) after resizing")
    in_channels: Literal[1, 3] = Field(1, description="images are converted to this many channels")
    normalization: NormalizationConfig = NormalizationConfig()
    train: SubsetRef = Field(
        ..., description="labelled training data (or the active-learning pool)"
    )
    val: SubsetRef | None = Field(
        None, description="validation data; default: val_fraction of train"
    )
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="share of the training groups held out for validation"
    )
    evaluate: dict[str, SubsetRef] = Field(
        default_factory=dict, description="named evaluation sets, e.g. {shenzhen_test: ...}"
    )
    source: SubsetRef | None = Field(None, description="unlabelled source-domain images (MAE)")

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: dict[str, int]) -> dict[str, int]:
        if len(v) < 2:
            raise ValueError("at least two classes are needed, e.g. {background: 0, lung: 255}")
        values = list(v.values())
        if len(set(values)) != len(values):
            raise ValueError(f"class values must be distinct, got {v}")
        if any(x < 0 for x in values):
            raise ValueError(f"class values must be >= 0, got {v}")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32 or v[0] % 32 or v[1] % 32:
            raise ValueError(
                f"image_size must be multiples of 32 and >= 32 (U-Net strides), got {v}"
            )
        return v

    @model_validator(mode="after")
    def _refs(self) -> DataConfig:
        refs: list[tuple[str, SubsetRef | None]] = [
            ("train", self.train),
            ("val", self.val),
            ("source", self.source),
        ]
        refs += [(f"evaluate.{k}", r) for k, r in self.evaluate.items()]
        for key, ref in refs:
            if ref is not None and ref.dataset not in self.datasets:
                raise ValueError(
                    f"{key}.dataset '{ref.dataset}' is not one of data.datasets "
                    f"({', '.join(sorted(self.datasets))})"
                )
        return self


class AugmentStep(BaseModel):
    """One albumentations transform by class name with its keyword arguments."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str


def _default_train_augment() -> list[AugmentStep]:
    return [
        AugmentStep(name="HorizontalFlip", p=0.5),
        AugmentStep(
            name="Affine",
            scale=[0.9, 1.1],
            translate_percent=[-0.05, 0.05],
            rotate=[-10, 10],
            p=0.5,
        ),
        AugmentStep(name="RandomBrightnessContrast", p=0.5),
    ]


class AugmentConfig(_Strict):
    """Albumentations pipelines; resizing and normalisation are added by alframe itself."""

    train: list[AugmentStep] = Field(default_factory=_default_train_augment)
    eval: list[AugmentStep] = Field(default_factory=list)


class ModelConfig(_Strict):
    """Any segmentation_models_pytorch architecture with any smp or timm (``tu-...``) encoder."""

    arch: str = Field(
        "Unet", description="smp architecture, e.g. Unet, UnetPlusPlus, FPN, DeepLabV3Plus"
    )
    encoder: str = Field("resnet18", description="smp encoder name or 'tu-<timm name>'")
    encoder_depth: int = Field(5, ge=3, le=5)
    encoder_weights: str | None = Field(
        None,
        description="local weights file for the encoder (.pth/.pt/.safetensors); null = random",
    )
    weights: str | None = Field(None, description="local weights file for the whole model")
    extra: dict[str, Any] = Field(default_factory=dict, description="extra smp constructor kwargs")


class TrainConfig(_Strict):
    """Optimisation, stopping and hardware settings (Lightning)."""

    max_epochs: int = Field(40, ge=1)
    max_steps: int = Field(-1, description="-1: no limit")
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    early_stopping_patience: int = Field(10, ge=0, description="0 disables early stopping")
    num_workers: int = Field(0, ge=0)
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = Field(1, ge=1)
    precision: str = "32-true"
    deterministic: bool = True
    progress: bool = True


class TrackingConfig(_Strict):
    """MLflow tracking. ``uri`` null: ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``."""

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = Field(None, description="defaults to the recipe name")


class MAEConfig(_Strict):
    """Convolutional masked autoencoder trained on unlabelled source images (docs/methods/xssr.md).

    The learning rate follows the MAE convention ``base_lr * batch_size / 256``.
    """

    encoder: str = Field("resnet18", description="smp encoder name or 'tu-<timm name>'")
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    patch_size: int = Field(16, ge=2, description="side of the square masked patches, pixels")
    norm_pix_loss: bool = Field(False, description="per-patch normalised reconstruction targets")
    max_epochs: int = Field(100, ge=1)
    batch_size: int = Field(16, ge=1)
    # The MAE paper's 1.5e-4 assumes batches of ~4096; linear scaling to batch 16 would give
    # lr ~ 1e-5, far too low for ~100 images. 0.024 gives lr = 1.5e-3 at batch 16.
    base_lr: float = Field(0.024, gt=0, description="lr = base_lr * batch_size / 256")
    weight_decay: float = Field(0.05, ge=0)
    min_crop_scale: float = Field(0.6, gt=0.0, le=1.0, description="random resized crop scale")


class EmbedConfig(_Strict):
    """Where embeddings come from and where they are cached.

    ``mae``: the encoder of the MAE trained by ``alframe embed train-mae`` (``weights`` = its
    checkpoint; default ``<output_dir>/mae/mae.ckpt``); ``timm``: any timm backbone by name, random
    init or a local ``weights`` file; ``segmentation``: the encoder of an alframe segmentation
    checkpoint (``weights``).
    """

    backbone: Literal["mae", "timm", "segmentation"] = "mae"
    encoder: str = Field("resnet18", description="timm model name (backbone: timm)")
    weights: str | None = None
    ensemble: list[str] = Field(
        default_factory=list,
        description="further MAE checkpoints (backbone: mae) embedded together with the main "
        "one: each member's embedding is unit-normalised and the rows concatenated, so "
        "distances average over the members instead of hanging on one MAE's training seed",
    )
    concat_penultimate: bool = Field(False, description="also pool the penultimate stage")
    batch_size: int = Field(32, ge=1, description="images per forward pass and device")
    devices: int | str | list[str] = Field(
        "auto",
        description="auto (every GPU, else CPU; under torchrun / SLURM every process takes its "
        "share), all, a count, a device (cpu, cuda:1) or a list: one process per device in "
        "Lightning's predict loop, rows put back in pool order (docs/scaling.md)",
    )
    cache_dir: str | None = Field(None, description="default: <output_dir>/embeddings")
    storage_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="dtype of the embedding cache on disk; float16 halves disk and page cache "
        "(selection then runs on the rounded values)",
    )
    memory_map: bool | Literal["auto"] = Field(
        "auto",
        description="select from the cached pool embedding as a memory-mapped store, read in row "
        "chunks (coreset, xssr; other strategies read it into RAM, with a note): true, false, or "
        "auto = when its file is larger than a quarter of the available memory. A reading "
        "option: the picks and the cache key stay the same (docs/scaling.md)",
    )
    mae: MAEConfig = MAEConfig()

    @field_validator("devices")
    @classmethod
    def _device_names(cls, value: int | str | list[str]) -> int | str | list[str]:
        return check_device_spelling(value)

    @field_validator("memory_map", mode="before")
    @classmethod
    def _memory_map_value(cls, value: Any) -> Any:
        # Before pydantic's own bool parsing, which would also take "yes", "on", 1, ...: the
        # three documented values only, and a message that names them.
        if isinstance(value, bool) or value == "auto":
            return value
        raise ValueError(f"expected auto, true or false, got {value!r}")


class SelectConfig(_Strict):
    """The query strategy and its parameters (see ``alframe.strategies.names()``).

    A strategy named without ``params`` gets alframe's recommended parameters
    (``alframe.strategies.defaults``; for ``xssr``: ``{alpha: auto, combine: add}``, chosen on the
    multi-site and single-site chest X-ray benchmarks, see docs/strategy_guide.md); ``params``
    given in the recipe, even ``{}``, are used as written.
    """

    strategy: str = Field("xssr", description="strategy name (alframe strategies)")
    params: dict[str, Any] = Field(
        default_factory=dict, description="strategy parameters (absent: the recommended ones)"
    )
    budget: int | None = Field(None, ge=1, description="default budget for `alframe select`")

    @model_validator(mode="before")
    @classmethod
    def _recommended_params(cls, data: Any) -> Any:
        # A strategy named without params gets alframe's recommended ones
        # (alframe.strategies.defaults); explicit params, even {}, are kept as written.
        from alframe.strategies.defaults import DEFAULT_STRATEGY, recommended_params

        if isinstance(data, dict) and "params" not in data:
            data = {**data, "params": recommended_params(data.get("strategy", DEFAULT_STRATEGY))}
        return data


class RPGConfig(_Strict):
    """Label-transfer options of reference-guided pseudo-labels (docs/methods/rpg.md)."""

    top_k: int = Field(1, ge=1, description="1: nearest reference pixel; k > 1: similarity vote")
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the top-k vote")
    max_per_class: int = Field(5000, ge=1, description="reference pixels kept per class")
    filter_percentile: float | None = Field(
        None, ge=0, lt=100, description="ignore pixels below this similarity percentile (off)"
    )
    spatial_weight: float = Field(
        0.0, ge=0, description="penalty on match distance in normalised image position (off)"
    )
    match_stride: int = Field(
        1, ge=1, description="pool features by this factor before matching (speed vs detail)"
    )
    prototypes_per_class: int | None = Field(
        None, ge=1, description="match k-means prototypes per class instead of every pixel"
    )
    seed: int = Field(0, description="seed of the class-balanced reference sample")


class PseudoLabelConfig(_Strict):
    """Semi-supervised training with pseudo-labels of the unlabelled pool (active-learning rounds).

    When enabled, every round trains on the human labels plus RPG pseudo-labels of the unlabelled
    pool items (computed on the fly from the labelled batch's decoder features), then writes the
    pool's pseudo-labels under ``rounds/NNN/pseudolabels.npz`` with their accuracy against the
    hidden ground truth (simulations). Pseudo-labels never enter evaluation.
    """

    enabled: bool = Field(False, description="train rounds semi-supervised with pseudo-labels")
    method: Literal["rpg"] = "rpg"
    warmup_fraction: float = Field(0.05, ge=0, le=1, description="supervised-only share of steps")
    ramp_fraction: float = Field(0.25, ge=0, le=1, description="share of steps of the sigmoid ramp")
    lambda_max: float = Field(1.0, ge=0, description="final weight of the pseudo-label loss")
    unlabelled_batch_size: int | None = Field(
        None, ge=1, description="unlabelled images per step (default: train.batch_size)"
    )
    store: bool = Field(
        True, description="pseudo-label the unlabelled pool after each round and keep it"
    )
    devices: int | str | list[str] = Field(
        "auto",
        description="where the stored pool pseudo-labels (and `alframe round pseudolabel`) are "
        "computed, spelled as embed.devices; several devices = one process each in Lightning's "
        "predict loop, the same labels as one process; one device: here, where the model is "
        "(docs/scaling.md)",
    )
    rpg: RPGConfig = RPGConfig()

    @field_validator("devices")
    @classmethod
    def _device_names(cls, value: int | str | list[str]) -> int | str | list[str]:
        return check_device_spelling(value)


class Recipe(_Strict):
    """A whole alframe recipe."""

    name: str = Field(
        ...,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description="recipe name: MLflow experiment and default run folder (letters, digits, _ . -)",
    )
    seed: int = Field(0, description="seed of every random choice: splits, init, shuffling, picks")
    data: DataConfig
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    embed: EmbedConfig = EmbedConfig()
    select: SelectConfig = SelectConfig()
    pseudolabel: PseudoLabelConfig = PseudoLabelConfig()
    experiment: ExperimentConfig | None = Field(
        None, description="active-learning budget experiment (`alframe experiment`)"
    )
    output_dir: str = Field("runs/{name}", description="'{name}' is replaced by the recipe name")

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def run_dir(self) -> str:
        """``output_dir`` with ``{name}`` filled in (relative to the working directory)."""
        return self.output_dir.replace("{name}", self.name)


# ----------------------------------------------------------------------------------------------
# Active-learning budget experiments (`alframe experiment`, alframe.loop)

_LABEL_PATTERN = r"^[A-Za-z0-9_.\-]+$"


class StrategySpec(_Strict):
    """One query strategy of an experiment (see ``alframe.strategies.names()``).

    ``label`` names the strategy in folders, MLflow runs, plots and tables (default: ``name``);
    give one when the same strategy appears twice with different parameters.
    ``cold_start`` overrides ``experiment.cold_start`` for this strategy.
    """

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = Field(None, pattern=_LABEL_PATTERN)
    cold_start: str | None = None
    cold_start_params: dict[str, Any] | None = None
    embedding: Literal["recipe", "model"] = Field(
        "recipe",
        description="embeddings of embedding-based strategies: recipe (the embed section) or "
        "model (from the second round on, the encoder of the previous round's segmentation "
        "model, for pool and source; the first round uses the recipe's)",
    )

    @property
    def display(self) -> str:
        """The label used in folders, runs and plots."""
        return self.label or self.name


class ScheduleConfig(_Strict):
    """A budget schedule: exactly one of ``cumulative``, ``batches`` or ``fractions``.

    ``cumulative``: labelled-set sizes after each round, e.g. [22, 44, 88]; ``batches``: items
    added per round, e.g. [22, 22, 44] (same schedule); ``fractions``: cumulative fractions of the
    pool, e.g. [0.05, 0.1, 0.2] (rounded, at least 1).
    """

    name: str = Field(..., pattern=_LABEL_PATTERN)
    cumulative: list[int] | None = None
    batches: list[int] | None = None
    fractions: list[float] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ScheduleConfig:
        from itertools import pairwise

        given = [k for k in ("cumulative", "batches", "fractions") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of cumulative (e.g. [22, 44, 88]), batches (e.g. [22, 22, 44]) "
                f"or fractions (e.g. [0.05, 0.1, 0.2]); got {given or 'none'}"
            )
        values = getattr(self, given[0])
        if not values:
            raise ValueError(f"{given[0]} is empty; list at least one round")
        if given[0] == "fractions":
            if any(not 0.0 < f <= 1.0 for f in values):
                raise ValueError(f"fractions must lie in (0, 1], got {values}")
            if any(b <= a for a, b in pairwise(values)):
                raise ValueError(f"fractions must increase strictly, got {values}")
        elif any(v < 1 for v in values):
            raise ValueError(f"{given[0]} must be positive integers, got {values}")
        elif given[0] == "cumulative" and any(b <= a for a, b in pairwise(values)):
            raise ValueError(
                f"cumulative sizes must increase strictly (each round adds items), got {values}"
            )
        return self


def _check_train_overrides(value: dict[str, Any], key: str) -> dict[str, Any]:
    import difflib

    from pydantic import ValidationError

    fields = list(TrainConfig.model_fields)
    for name in value:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"{key}.{name} is not a train setting (valid: {', '.join(fields)}){hint}"
            )
    try:
        TrainConfig.model_validate(value)
    except ValidationError as err:
        problems = "; ".join(
            f"{key}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ValueError(problems) from None
    return value


class ExperimentConfig(_Strict):
    """Strategies × budget schedules × seeds, plus a full-data reference per seed.

    Active-learning rounds train with ``train`` merged with ``experiment.train`` (and
    ``steps_per_round``); the full-data reference trains with ``train`` merged with
    ``experiment.reference_train`` on the whole pool, validating on ``data.val_fraction``.
    """

    strategies: list[StrategySpec] = Field(..., min_length=1)
    schedules: list[ScheduleConfig] = Field(..., min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    full_reference: bool = Field(True, description="train on the whole pool once per seed")
    retrain: Literal["scratch", "finetune"] = Field(
        "scratch", description="each round from scratch, or from the previous round's weights"
    )
    cold_start: str = Field(
        "random", description="strategy for rounds without a model (e.g. random, typiclust)"
    )
    cold_start_params: dict[str, Any] = Field(default_factory=dict)
    steps_per_round: int | None = Field(
        None,
        ge=1,
        description=(
            "fixed optimisation steps per round (comparable across budgets); null: the epochs of "
            "the train section"
        ),
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="train.* overrides for the active-learning rounds"
    )
    reference_train: dict[str, Any] = Field(
        default_factory=dict, description="train.* overrides for the full-data reference"
    )
    val_fraction: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "validation share held out of the labelled set in rounds; 0: train on every label "
            "and keep the final weights"
        ),
    )
    pool_size: int | None = Field(
        None, ge=2, description="use a seeded random subset of data.train as the pool (smoke runs)"
    )
    primary_set: str | None = Field(
        None, description="evaluation set of progress lines and the summary (default: the first)"
    )
    pool_agreement: bool = Field(
        True,
        description=(
            "label-free stopping signal: after each round, mean Dice between the previous and "
            "the current model's predictions on the still-unlabelled pool (one inference pass "
            "over it per round); false: skip it"
        ),
    )

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_train_overrides(v, "experiment.train")

    @field_validator("reference_train")
    @classmethod
    def _reference_train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _check_train_overrides(v, "experiment.reference_train")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if any(s < 0 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct non-negative integers, got {v}")
        return v

    @model_validator(mode="after")
    def _unique(self) -> ExperimentConfig:
        labels = [s.display for s in self.strategies]
        duplicated = sorted({x for x in labels if labels.count(x) > 1})
        if duplicated:
            raise ValueError(
                f"strategy labels must be unique, {duplicated} repeat; give each a label"
            )
        if "full" in labels and self.full_reference:
            raise ValueError("the label 'full' is reserved for the full-data reference")
        names = [s.name for s in self.schedules]
        if len(set(names)) != len(names):
            raise ValueError(f"schedule names must be unique, got {names}")
        return self


Recipe.model_rebuild()
