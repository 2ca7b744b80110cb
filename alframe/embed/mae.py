"""Convolutional masked autoencoder (MAE) trained on unlabelled source images (XSSR Stage 1).

Method note: docs/methods/xssr.md (step 1). Each of alframe's own choices is a parameter here:
``patch_size`` (16 px) square patches are masked at ``mask_ratio`` (0.75) and their pixels zeroed;
an smp/timm CNN encoder (random init) encodes the masked image; a light convolutional decoder
reconstructs it; the loss is the MSE over masked pixels only (optionally against per-patch
normalised targets). AdamW with ``lr = base_lr · batch / 256``, cosine schedule, random resized
crops with scale ≥ ``min_crop_scale``.

Decoder choice: a plain stack of (nearest ×2 upsample → 3×3 conv → BN → ReLU) blocks from the
deepest feature map back to full resolution, *without* U-Net skip connections. Embeddings are
pooled from the deepest stage, so everything the decoder needs has to pass through that stage;
skips would let the shallow stages solve the in-painting locally and leave the deepest stage
under-trained. Nearest upsampling also keeps the backward pass deterministic on CUDA (bilinear's
is not).

Randomness: crops and masks of one training batch come from a CPU ``torch.Generator`` seeded by
``(seed, global_step)``, so they are the same on every device and every rerun.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before lightning / smp pull in huggingface_hub: weights are never downloaded (ENVIRONMENT.md).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from alframe._atomic import atomic_write_text
from alframe.config.schema import MAEConfig, Recipe
from alframe.errors import AlframeNote, DataError, ModelError

CHECKPOINT_FORMAT = "alframe.mae/1"
"""Tag stored in ``mae.ckpt`` so other files are refused with a clear message."""


# ----------------------------------------------------------------------------------------------
# Masking, augmentation and loss (pure functions, tested directly)


def batch_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one training batch, seeded by ``(seed, step)``."""
    # A large odd multiplier keeps (seed, step) pairs from colliding for realistic ranges.
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + step) % (2**63))


def random_patch_mask(
    batch_size: int,
    height: int,
    width: int,
    patch_size: int,
    mask_ratio: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mask ``round(mask_ratio · n_patches)`` random square patches of each image.

    The image is tiled by a ``ceil(H/p) × ceil(W/p)`` grid of ``p × p`` patches (patches at the
    bottom/right border are cut off when H or W is not a multiple of p). Each image gets its own
    random patch set, drawn as in MAE: sort uniform noise and mask the first k patches. At least
    one patch is masked and, when there are two or more, at least one stays visible.

    Args:
        batch_size: B.
        height: H in pixels.
        width: W in pixels.
        patch_size: p, side of a patch in pixels.
        mask_ratio: fraction of patches to mask, in (0, 1).
        generator: CPU generator the draw comes from.

    Returns:
        (B, 1, H, W) bool tensor on the CPU, True = masked.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if not 0.0 < mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    grid_h, grid_w = math.ceil(height / patch_size), math.ceil(width / patch_size)
    n_patches = grid_h * grid_w
    n_masked = min(max(round(mask_ratio * n_patches), 1), max(n_patches - 1, 1))
    noise = torch.rand(batch_size, n_patches, generator=generator)
    order = noise.argsort(dim=1)
    flat = torch.zeros(batch_size, n_patches, dtype=torch.bool)
    flat.scatter_(1, order[:, :n_masked], True)
    grid = flat.view(batch_size, 1, grid_h, grid_w)
    pixels = grid.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return pixels[:, :, :height, :width].contiguous()


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> torch.Tensor:
    """Crop a random box of each image and resize it back to the image size (bilinear).

    The box's area is a uniform fraction in ``scale`` of the image, its aspect ratio log-uniform
    in ``ratio`` (torchvision's rule, ten tries, then the whole image).

    Args:
        images: (B, C, H, W) float tensor (any device).
        generator: CPU generator the boxes come from.
        scale: (min, max) area fraction.
        ratio: (min, max) width / height.

    Returns:
        (B, C, H, W) tensor on the input's device.
    """
    batch, _, height, width = images.shape
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    out = torch.empty_like(images)
    for i in range(batch):
        top, left, crop_h, crop_w = 0, 0, height, width
        for _ in range(10):
            draws = torch.rand(4, generator=generator).tolist()
            target = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
            aspect = math.exp(log_lo + (log_hi - log_lo) * draws[1])
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(draws[2] * (height - h + 1))
                left = int(draws[3] * (width - w + 1))
                crop_h, crop_w = h, w
                break
        crop = images[i : i + 1, :, top : top + crop_h, left : left + crop_w]
        if (crop_h, crop_w) == (height, width):
            out[i : i + 1] = crop
        else:
            out[i : i + 1] = F.interpolate(
                crop, size=(height, width), mode="bilinear", align_corners=False
            )
    return out


def _patch_stats(
    target: torch.Tensor, patch_size: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std (over the patch's pixels and channels), broadcast to pixels."""
    batch, channels, height, width = target.shape
    pad_h, pad_w = (-height) % patch_size, (-width) % patch_size
    valid = torch.ones(batch, 1, height, width, dtype=target.dtype, device=target.device)
    if pad_h or pad_w:
        target = F.pad(target, (0, pad_w, 0, pad_h))
        valid = F.pad(valid, (0, pad_w, 0, pad_h))
    area = float(patch_size * patch_size)
    count = F.avg_pool2d(valid, patch_size) * area * channels
    total = F.avg_pool2d(target, patch_size).sum(1, keepdim=True) * area
    total_sq = F.avg_pool2d(target * target, patch_size).sum(1, keepdim=True) * area
    mean = total / count
    # Unbiased variance, as MAE's ``target.var(dim=-1)``; clamp guards one-pixel patches.
    var = ((total_sq - count * mean * mean) / (count - 1).clamp_min(1.0)).clamp_min(0.0)
    std = (var + eps).sqrt()

    def to_pixels(x: torch.Tensor) -> torch.Tensor:
        up = x.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
        return up[:, :, :height, :width]

    return to_pixels(mean), to_pixels(std)


def normalize_patches(target: torch.Tensor, patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised targets (MAE ``norm_pix_loss``): ``(x − mean_p) / sqrt(var_p + eps)``.

    Args:
        target: (B, C, H, W) images.
        patch_size: p, the masking patch side.
        eps: added to the variance.

    Returns:
        (B, C, H, W) tensor.
    """
    mean, std = _patch_stats(target, patch_size, eps)
    return (target - mean) / std


def masked_mse_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    patch_size: int = 16,
    norm_pix_loss: bool = False,
) -> torch.Tensor:
    """Mean squared error over masked pixels only.

    Args:
        prediction: (B, C, H, W) reconstruction.
        target: (B, C, H, W) original (unmasked) images.
        mask: (B, 1, H, W) bool, True = masked (counted in the loss).
        patch_size: patch side used for ``norm_pix_loss``.
        norm_pix_loss: compare against per-patch normalised targets.

    Returns:
        Scalar: mean over masked pixels of the channel-mean squared error.
    """
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ"
        )
    if norm_pix_loss:
        target = normalize_patches(target, patch_size)
    error = (prediction - target).pow(2).mean(dim=1, keepdim=True)
    weight = mask.to(error.dtype)
    return (error * weight).sum() / weight.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------------------------
# Model


class ConvDecoder(nn.Module):
    """Light decoder: ``n_up`` × (nearest ×2 → 3×3 conv → BN → ReLU), then a 1×1 conv to pixels.

    Args:
        in_channels: channels of the deepest encoder stage.
        out_channels: image channels to reconstruct.
        channels: width of each upsampling block (its length = number of ×2 upsamplings).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        previous = in_channels
        for width in channels:
            blocks += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(previous, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(previous, out_channels, kernel_size=1)

    def forward(self, deepest: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, C_deep, h, w) → (B, out_channels, *size)."""
        out = self.head(self.blocks(deepest))
        if out.shape[-2:] != size:
            # Only for sizes that are not multiples of the encoder stride.
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out


class ConvMAE(nn.Module):
    """Encoder + decoder. ``forward`` takes an already masked image batch.

    Args:
        encoder_name: smp encoder name or ``tu-<timm name>``.
        in_channels: image channels.
        encoder_depth: encoder stages (the decoder upsamples ``encoder_depth`` times).
        decoder_channels: widths of the decoder blocks (the first ``encoder_depth`` are used).
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        in_channels: int = 1,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ) -> None:
        super().__init__()
        from alframe.embed.extract import build_smp_encoder

        if len(decoder_channels) < encoder_depth:
            raise ModelError(
                f"decoder_channels {list(decoder_channels)} needs {encoder_depth} entries "
                f"(one per encoder stage)"
            )
        self.encoder = build_smp_encoder(encoder_name, in_channels, encoder_depth)
        deepest = int(self.encoder.out_channels[-1])  # type: ignore[index]
        self.decoder = ConvDecoder(deepest, in_channels, list(decoder_channels)[:encoder_depth])

    def forward(self, masked_images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) masked images → (B, C, H, W) reconstruction."""
        features = self.encoder(masked_images)
        height, width = masked_images.shape[-2:]
        return self.decoder(features[-1], (int(height), int(width)))


def _images_of(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        images: torch.Tensor = batch["image"]
        return images
    if isinstance(batch, list | tuple):
        first: torch.Tensor = batch[0]
        return first
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"cannot find images in a batch of type {type(batch).__name__}")
    return batch


class MaskedAutoencoderTask(L.LightningModule):
    """Lightning module training a :class:`ConvMAE` (all arguments are hyper-parameters).

    Args:
        encoder_name: smp encoder name or ``tu-<timm name>``.
        in_channels: image channels.
        mask_ratio: fraction of patches masked.
        patch_size: masked patch side in pixels.
        norm_pix_loss: per-patch normalised targets.
        base_lr: learning rate per 256 images; ``lr = base_lr · batch_size / 256``.
        batch_size: images per optimiser step (for the learning-rate rule).
        weight_decay: AdamW weight decay (not applied to biases and norm parameters, as in MAE;
            betas (0.9, 0.95) as in MAE).
        min_crop_scale: smallest random-resized-crop area fraction.
        crop_ratio: (min, max) aspect ratio of the crops.
        warmup_steps: linear warm-up steps before the cosine decay.
        encoder_depth: encoder stages.
        decoder_channels: decoder block widths.
        seed: seeds the per-batch crop / mask generators.
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        in_channels: int = 1,
        mask_ratio: float = 0.75,
        patch_size: int = 16,
        norm_pix_loss: bool = False,
        base_lr: float = 1.5e-4,
        batch_size: int = 16,
        weight_decay: float = 0.05,
        min_crop_scale: float = 0.6,
        crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        warmup_steps: int = 0,
        encoder_depth: int = 5,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.mae = ConvMAE(encoder_name, in_channels, encoder_depth, decoder_channels)
        self.loss_history: list[float] = []
        self._epoch_sum = torch.zeros(())
        self._epoch_batches = 0

    @classmethod
    def from_config(
        cls, cfg: MAEConfig, in_channels: int, batch_size: int, seed: int
    ) -> MaskedAutoencoderTask:
        """Build from ``embed.mae`` (``batch_size`` = the effective batch size)."""
        return cls(
            encoder_name=cfg.encoder,
            in_channels=in_channels,
            mask_ratio=cfg.mask_ratio,
            patch_size=cfg.patch_size,
            norm_pix_loss=cfg.norm_pix_loss,
            base_lr=cfg.base_lr,
            batch_size=batch_size,
            weight_decay=cfg.weight_decay,
            min_crop_scale=cfg.min_crop_scale,
            seed=seed,
        )

    @property
    def encoder(self) -> nn.Module:
        """The MAE's encoder (what embeddings are computed with)."""
        return self.mae.encoder

    @property
    def learning_rate(self) -> float:
        """``base_lr · batch_size / 256``."""
        return float(self.hparams["base_lr"]) * int(self.hparams["batch_size"]) / 256.0

    def masked_loss(
        self, images: torch.Tensor, generator: torch.Generator, augment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Augment, mask, reconstruct and score one batch.

        Args:
            images: (B, C, H, W) clean images.
            generator: CPU generator for the crops and the mask.
            augment: apply the random resized crop first.

        Returns:
            ``(loss, reconstruction (B, C, H, W), mask (B, 1, H, W) bool)``.
        """
        hp = self.hparams
        if augment:
            with torch.no_grad():
                images = random_resized_crop(
                    images,
                    generator,
                    scale=(float(hp["min_crop_scale"]), 1.0),
                    ratio=(float(hp["crop_ratio"][0]), float(hp["crop_ratio"][1])),
                )
        batch, _, height, width = images.shape
        mask = random_patch_mask(
            batch, height, width, int(hp["patch_size"]), float(hp["mask_ratio"]), generator
        ).to(images.device)
        reconstruction = self.mae(images.masked_fill(mask, 0.0))
        loss = masked_mse_loss(
            reconstruction, images, mask, int(hp["patch_size"]), bool(hp["norm_pix_loss"])
        )
        return loss, reconstruction, mask

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = _images_of(batch).float()
        # The rank term gives every DDP process its own crops / masks for its own images.
        seed = int(self.hparams["seed"]) + 7919 * int(self.global_rank)
        generator = batch_generator(seed, int(self.global_step))
        loss, _, _ = self.masked_loss(images, generator)
        self.log("mae/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        self._epoch_sum = self._epoch_sum.to(loss.device) + loss.detach()
        self._epoch_batches += 1
        return loss

    def on_train_epoch_start(self) -> None:
        self._epoch_sum = torch.zeros((), device=self.device)
        self._epoch_batches = 0

    def on_train_epoch_end(self) -> None:
        if self._epoch_batches:
            mean = float(self._epoch_sum.item()) / self._epoch_batches
            self.loss_history.append(mean)
            self.log("mae/epoch_loss", mean, prog_bar=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The per-epoch losses are not module state; a resumed run must report all of them.
        checkpoint["alframe_loss_history"] = list(self.loss_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.loss_history = [float(x) for x in checkpoint.get("alframe_loss_history", [])]

    def configure_optimizers(self) -> Any:
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for param in self.parameters():
            if not param.requires_grad:
                continue
            # Biases and norm scales are not regularised (MAE / timm convention).
            (no_decay if param.ndim <= 1 else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(self.hparams["weight_decay"])},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.learning_rate,
            betas=(0.9, 0.95),
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.hparams["warmup_steps"])

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# ----------------------------------------------------------------------------------------------
# Files


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = _tmp_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path
) -> None:
    from safetensors.torch import save_file

    tmp = _tmp_path(path)
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_mae(
    task: MaskedAutoencoderTask, folder: Path, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``mae.ckpt``, ``mae_encoder.safetensors`` and ``mae_encoder.json`` atomically.

    ``mae.ckpt`` is a plain dict (format tag, hyper-parameters, state dict, loss history, extra
    info) that loads with ``torch.load(..., weights_only=True)``.

    Args:
        task: the trained module.
        folder: output folder (created).
        extra: more JSON-able info for the checkpoint and the sidecar (epochs, image size, ...).

    Returns:
        ``(checkpoint path, encoder safetensors path)``.
    """
    from alframe.embed.extract import weights_hash

    folder.mkdir(parents=True, exist_ok=True)
    hparams: dict[str, Any] = {
        k: list(v) if isinstance(v, tuple) else v for k, v in dict(task.hparams).items()
    }
    hparams["decoder_channels"] = [int(c) for c in hparams["decoder_channels"]]
    state = {k: v.detach().cpu().contiguous() for k, v in task.mae.state_dict().items()}
    info = {
        "format": CHECKPOINT_FORMAT,
        "encoder": str(hparams["encoder_name"]),
        "in_channels": int(hparams["in_channels"]),
        "encoder_depth": int(hparams["encoder_depth"]),
        "encoder_weights_hash": weights_hash(task.encoder),
        **(extra or {}),
    }
    checkpoint = folder / "mae.ckpt"
    _atomic_torch_save(
        {
            "format": CHECKPOINT_FORMAT,
            "hyper_parameters": hparams,
            "state_dict": state,
            "loss_history": list(task.loss_history),
            "info": info,
        },
        checkpoint,
    )
    encoder_state = {k: v.detach().cpu().contiguous() for k, v in task.encoder.state_dict().items()}
    encoder_file = folder / "mae_encoder.safetensors"
    meta = {k: str(v) for k, v in info.items() if not isinstance(v, list | dict)}
    _atomic_save_safetensors(encoder_state, meta, encoder_file)
    atomic_write_text(folder / "mae_encoder.json", json.dumps(info, indent=2) + "\n")
    return checkpoint, encoder_file


def _refuse(path: Path, why: str) -> ModelError:
    return ModelError(
        f"{path} is not an alframe MAE checkpoint ({why}); pass the mae.ckpt or "
        "mae_encoder.safetensors written by `alframe embed train-mae`"
    )


def load_mae(path: str | os.PathLike[str]) -> MaskedAutoencoderTask:
    """Load a whole :class:`MaskedAutoencoderTask` from ``mae.ckpt`` (``weights_only=True``).

    Raises:
        ModelError: missing, unreadable or not an alframe MAE checkpoint.
    """
    file = Path(path)
    if not file.is_file():
        raise ModelError(
            f"MAE checkpoint {file} does not exist; run `alframe embed train-mae` first"
        )
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # any reader failure means the same thing to the user
        raise _refuse(file, f"{type(err).__name__}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise _refuse(file, "no format tag")
    hparams = dict(data["hyper_parameters"])
    hparams["crop_ratio"] = tuple(hparams["crop_ratio"])
    hparams["decoder_channels"] = tuple(hparams["decoder_channels"])
    task = MaskedAutoencoderTask(**hparams)
    task.mae.load_state_dict(data["state_dict"], strict=True)
    task.loss_history = [float(x) for x in data.get("loss_history", [])]
    return task


def load_mae_encoder(path: str | os.PathLike[str]) -> tuple[nn.Module, dict[str, Any]]:
    """Load only the encoder of an MAE from ``mae.ckpt`` or ``mae_encoder.safetensors``.

    Args:
        path: the checkpoint, or the safetensors file (its ``.json`` sidecar, or the file's own
            metadata, names the encoder).

    Returns:
        ``(encoder module on the CPU, info dict with at least encoder, in_channels,
        encoder_depth)``.

    Raises:
        ModelError: missing or foreign file, or weights that do not fit the named encoder.
    """
    from alframe.embed.extract import build_smp_encoder

    file = Path(path)
    if not file.is_file():
        raise ModelError(
            f"MAE weights {file} do not exist; run `alframe embed train-mae --recipe R` first "
            "or set embed.weights"
        )
    if file.name.lower().endswith(".safetensors"):
        from safetensors import safe_open
        from safetensors.torch import load_file

        sidecar = file.with_suffix(".json")
        try:
            if sidecar.is_file():
                info: dict[str, Any] = json.loads(sidecar.read_text(encoding="utf-8"))
            else:
                with safe_open(str(file), framework="pt") as handle:
                    info = dict(handle.metadata() or {})
            state = load_file(str(file), device="cpu")
        except Exception as err:  # any reader failure means the same thing to the user
            raise _refuse(file, f"{type(err).__name__}: {err}") from None
        if info.get("format") != CHECKPOINT_FORMAT:
            raise _refuse(file, f"no format tag in {sidecar.name} or the file's metadata")
    else:
        try:
            data = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # any reader failure means the same thing to the user
            raise _refuse(file, f"{type(err).__name__}: {err}") from None
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise _refuse(file, "no format tag")
        info = dict(data["info"])
        state = {
            k.removeprefix("encoder."): v
            for k, v in data["state_dict"].items()
            if k.startswith("encoder.")
        }
    encoder = build_smp_encoder(
        str(info["encoder"]), int(info["in_channels"]), int(info.get("encoder_depth", 5))
    )
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise _refuse(file, f"weights do not fit {info['encoder']}: {str(err)[:200]}") from None
    return encoder, info


# ----------------------------------------------------------------------------------------------
# Training


@dataclass
class MAETrainResult:
    """What :func:`train_mae` produced.

    Attributes:
        checkpoint: ``<run_dir>/mae/mae.ckpt``.
        final_loss: mean masked-pixel loss of the last epoch.
        epochs: epochs trained.
        wall_time_s: wall time of the fit.
        loss_history: mean loss of every epoch.
        encoder_weights: ``<run_dir>/mae/mae_encoder.safetensors``.
        n_images: source images trained on.
    """

    checkpoint: Path
    final_loss: float
    epochs: int
    wall_time_s: float
    loss_history: list[float] = field(default_factory=list)
    encoder_weights: Path | None = None
    n_images: int = 0


class SingleSiteNote(AlframeNote):
    """The MAE was trained on the pool itself because the recipe names no source site."""


def _check_not_target(recipe: Recipe, samples: Sequence[Any]) -> None:
    """Refuse target-domain images: the MAE must only ever see unlabelled source images."""
    data = recipe.data
    source_name = data.source.dataset if data.source is not None else None
    target_refs = [
        data.train,
        *([data.val] if data.val is not None else []),
        *data.evaluate.values(),
    ]
    forbidden = {ref.dataset for ref in target_refs} - {source_name}
    offending = [s for s in samples if getattr(s, "dataset", None) in forbidden]
    if not offending and source_name == data.train.dataset:
        # Source and pool share a data set (split into parts): the pool's items are off limits.
        from alframe.data.catalog import DataCatalog

        pool_ids = {s.id for s in DataCatalog(recipe).samples(data.train)}
        offending = [s for s in samples if getattr(s, "id", None) in pool_ids]
    if offending:
        raise DataError(
            f"the MAE must never see target images, but {len(offending)} of the "
            f"{len(samples)} training images (e.g. {offending[0].id}) belong to the target "
            f"data ({', '.join(sorted(forbidden)) or data.train.dataset}); point data.source at "
            "the unlabelled source-domain images only"
        )


def _source_dataset(recipe: Recipe, samples: Any) -> Any:
    """The training dataset: a given torch Dataset, or the source samples with eval transforms."""
    if samples is not None and not isinstance(samples, list | tuple):
        return samples  # already a Dataset (tests, custom pipelines): the caller vouches for it
    if samples is None:
        from alframe.data.catalog import DataCatalog

        if recipe.data.source is None:
            # A single-site pool: its own unlabelled images are all there is. XSSR's novelty
            # (distance to the source) is then switched off by the strategy itself.
            warnings.warn(
                "no data.source: the MAE is trained on the pool's own (unlabelled) images and "
                "XSSR runs without its novelty term; set data.source for the cross-domain mode",
                SingleSiteNote,
                stacklevel=3,
            )
            return _eval_dataset(recipe, DataCatalog(recipe).samples(recipe.data.train))
        samples = DataCatalog(recipe).samples(recipe.data.source)
    _check_not_target(recipe, samples)
    return _eval_dataset(recipe, samples)


def _eval_dataset(recipe: Recipe, samples: Sequence[Any]) -> Any:
    from alframe.data import SegmentationDataset

    # Eval transforms (resize + normalisation + augment.eval): the same preprocessing the
    # embeddings will see; the MAE's own augmentation happens on the batch in the task.
    return SegmentationDataset(list(samples), recipe.data, list(recipe.augment.eval), train=False)


class EpochSeededSampler(torch.utils.data.Sampler[int]):
    """Shuffles ``n`` indices with a permutation seeded by ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch, so an epoch's order does not depend on
    how many epochs this process has run: a run resumed at epoch k sees the same orders as an
    uninterrupted one.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = n
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the permutation of ``epoch``."""
        self.epoch = int(epoch)

    def __iter__(self) -> Any:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


RESUME_FILE = "resume.ckpt"
"""Lightning checkpoint of an unfinished MAE training, in ``<run_dir>/mae/``."""


class _EpochResumePoint(L.pytorch.callbacks.Checkpoint):
    """Saves the whole training state after every epoch (atomically), with the fingerprint of
    the settings it belongs to. A ``Checkpoint`` subclass, so Lightning calls it after the
    module's own epoch-end hook (the epoch's loss is already in the history)."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return  # the final weights are saved as mae.ckpt right after
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(partial)
        atomic_write_text(self.path.with_suffix(".json"), self.fingerprint)
        os.replace(partial, self.path)


def _resume_fingerprint(cfg: MAEConfig, recipe: Recipe, dataset: Any) -> str:
    """What a resume point must match: the MAE settings, seed, image size and source items
    (their ids when the dataset lists its samples, else their number; no image is read)."""
    samples = getattr(dataset, "samples", None)
    items: Any = [str(s.id) for s in samples] if samples is not None else len(dataset)
    return json.dumps(
        {
            "mae": cfg.model_dump(),
            "seed": recipe.seed,
            "image_size": list(recipe.data.image_size),
            "in_channels": recipe.data.in_channels,
            "items": items,
        },
        sort_keys=True,
    )


def train_mae(
    recipe: Recipe,
    out_dir: str | os.PathLike[str] | None = None,
    samples: Sequence[Any] | Any | None = None,
    callbacks: list[Any] | None = None,
) -> MAETrainResult:
    """Train the convolutional MAE of ``recipe.embed.mae`` on the unlabelled source images.

    Writes ``<run_dir>/mae/mae.ckpt`` (whole MAE), ``mae_encoder.safetensors`` (encoder only)
    and ``mae_encoder.json`` (encoder name, in_channels, weights hash, ...), each atomically.
    After every epoch the training state is saved to ``mae/resume.ckpt``; a later call with the
    same settings and source images continues from there (to the same weights as an
    uninterrupted run) and removes it when done. Other settings start from scratch.
    Seeded with ``recipe.seed``; deterministic (``recipe.train.deterministic``); no logger
    folders are created (no ``lightning_logs``).

    Args:
        recipe: the validated recipe; ``data.source`` names the source images, ``embed.mae``
            the MAE settings, ``train`` the hardware settings (accelerator, devices, precision,
            num_workers, progress, deterministic).
        out_dir: run folder replacing ``recipe.run_dir``; files go to ``<out_dir>/mae/``.
        samples: the source samples to use instead of ``data.source`` (they are still checked
            against the target data), or a ready torch Dataset of source images (used as is;
            the caller vouches that it holds no target images).
        callbacks: extra Lightning callbacks (e.g. an MLflow epoch logger).

    Returns:
        A :class:`MAETrainResult`.

    Raises:
        ConfigError: ``data.source`` is not set and no samples were given.
        DataError: fewer than 2 images, or target images among them.
    """
    from torch.utils.data import DataLoader

    cfg = recipe.embed.mae
    dataset = _source_dataset(recipe, samples)
    n_images = len(dataset)
    if n_images < 2:
        raise DataError(
            f"the MAE needs at least 2 source images, got {n_images}; check data.source"
        )
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    batch_size = min(cfg.batch_size, n_images)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSeededSampler(n_images, recipe.seed),
        # A one-image last batch breaks BatchNorm on 1×1 deep features; drop partial batches
        # whenever there is more than one batch.
        drop_last=n_images > batch_size,
        num_workers=recipe.train.num_workers,
        persistent_workers=recipe.train.num_workers > 0,
    )
    task = MaskedAutoencoderTask.from_config(cfg, recipe.data.in_channels, batch_size, recipe.seed)

    run_dir = Path(out_dir) if out_dir is not None else Path(recipe.run_dir)
    folder = run_dir / "mae"
    folder.mkdir(parents=True, exist_ok=True)
    from alframe.models.training import make_trainer, torch_flags_restored

    resume = folder / RESUME_FILE
    fingerprint = _resume_fingerprint(cfg, recipe, dataset)
    recorded = resume.with_suffix(".json")
    resume_from = None
    if (
        resume.is_file()
        and recorded.is_file()
        and recorded.read_text(encoding="utf-8") == fingerprint
    ):
        resume_from = str(resume)
        if recipe.train.progress:
            print(f"resuming the MAE from its last finished epoch ({resume})", flush=True)
    started = time.perf_counter()
    with torch_flags_restored():
        trainer = make_trainer(
            recipe,
            folder,
            logger=None,
            callbacks=[*(callbacks or []), _EpochResumePoint(resume, fingerprint)],
            max_epochs=cfg.max_epochs,
            progress_label=f"MAE ({cfg.max_epochs} epochs)",
            # Our resume point is the only Checkpoint callback: Lightning adds no other.
            checkpointing=True,
        )
        trainer.fit(task, train_dataloaders=loader, ckpt_path=resume_from)
    wall = time.perf_counter() - started
    epochs = int(trainer.current_epoch)
    extra = {
        "epochs": epochs,
        "n_images": n_images,
        "batch_size": batch_size,
        "seed": recipe.seed,
        "image_size": list(recipe.data.image_size),
        "source": recipe.data.source.model_dump() if recipe.data.source is not None else None,
        "final_loss": task.loss_history[-1] if task.loss_history else None,
    }
    checkpoint, encoder_file = save_mae(task, folder, extra)
    # A kill inside the save of a resume point can leave its ``.partial`` behind as well.
    for leftover in (resume, recorded, resume.with_name(resume.name + ".partial")):
        leftover.unlink(missing_ok=True)
    history = list(task.loss_history)
    return MAETrainResult(
        checkpoint=checkpoint,
        final_loss=history[-1] if history else math.nan,
        epochs=epochs,
        wall_time_s=wall,
        loss_history=history,
        encoder_weights=encoder_file,
        n_images=n_images,
    )
