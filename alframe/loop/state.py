"""On-disk state of an active-learning run: one atomic, self-checking manifest per round.

Layout of a run directory (one strategy × schedule × seed)::

    <run>/run.json                  what this run is (spec + fingerprint), written once
    <run>/rounds/000/manifest.json  the commit point of round 0 (written last, atomically)
    <run>/rounds/000/selection.csv  selected ids, rank, score and per-term scores
    <run>/rounds/000/model/...      the round's checkpoint
    <run>/rounds/000/eval_<set>.csv per-image scores
    <run>/rounds/000/pool_predictions.npz  label maps of the still-unlabelled items (stopping signal)
    <run>/rounds/000/tracking.json  the MLflow run the round was logged to (optional)

A round counts as done exactly when its manifest exists and verifies. A round folder without a
manifest is an interrupted round: it is deleted and redone on ``--resume``. A manifest that does
not verify (bad JSON, checksum mismatch, missing or changed checkpoint) stops the run with a
:class:`~alframe.errors.StateError` saying which folder to delete.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from alframe._atomic import atomic_write_text
from alframe.errors import StateError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "alframe.round/1"
RUN_FORMAT = "alframe.run/1"
_PURPOSES = {"select": 0, "train": 1}
_PACKAGES = {
    "alframe": ("alframe",),
    "torch": ("torch",),
    "lightning": ("lightning",),
    "segmentation_models_pytorch": ("segmentation-models-pytorch",),
    "numpy": ("numpy",),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss"),
}


def derive_seed(seed: int, round_index: int, purpose: str) -> int:
    """The seed of one random choice of a round, derived from (seed, round, purpose).

    Selection and training get independent streams; the same (seed, round) gives the same
    training seed whatever the strategy, so strategies are compared on paired seeds.

    Args:
        seed: the experiment seed.
        round_index: 0-based round.
        purpose: ``"select"`` or ``"train"``.

    Returns:
        A seed in [0, 2**31).
    """
    if purpose not in _PURPOSES:
        raise ValueError(f"purpose must be one of {sorted(_PURPOSES)}, got {purpose!r}")
    sequence = np.random.SeedSequence([int(seed), int(round_index), _PURPOSES[purpose]])
    return int(sequence.generate_state(1, dtype=np.uint32)[0]) & 0x7FFFFFFF


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a round's result (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name, distributions in _PACKAGES.items():
        versions[name] = None
        for distribution in distributions:
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def sha256_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def jsonable(value: Any) -> Any:
    """Plain JSON data: NumPy scalars/arrays → Python, tuples → lists, NaN/inf → None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int):
        return value
    return str(value)


def canonical_json(data: Any) -> str:
    """Deterministic compact JSON (sorted keys), the input of checksums and fingerprints."""
    return json.dumps(jsonable(data), sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_checksum(content: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``content`` without its ``checksum`` key."""
    body = {k: v for k, v in content.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def fingerprint(data: Any) -> str:
    """Short hex digest identifying a configuration (e.g. what decides a run's results)."""
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()[:16]


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """:func:`atomic_write_text` of indented JSON (NaN/inf written as null)."""
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


def read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    """Read a JSON object or raise a StateError naming the file, ``what`` it is and the ``fix``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StateError(f"{path}: the {what} cannot be read ({err}); {fix}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: the {what} is not a JSON object; {fix}")
    return data


class RunState:
    """The round folders of one active-learning run directory.

    Args:
        run_dir: the run's folder (created on the first write).
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)

    @property
    def rounds_dir(self) -> Path:
        """``<run>/rounds``."""
        return self.run_dir / "rounds"

    def round_dir(self, round_index: int) -> Path:
        """``<run>/rounds/NNN``."""
        return self.rounds_dir / f"{round_index:03d}"

    def manifest_path(self, round_index: int) -> Path:
        """``<run>/rounds/NNN/manifest.json``."""
        return self.round_dir(round_index) / MANIFEST_NAME

    def _round_folders(self) -> dict[int, Path]:
        if not self.rounds_dir.is_dir():
            return {}
        folders = {}
        for child in self.rounds_dir.iterdir():
            if child.is_dir() and child.name.isdigit():
                folders[int(child.name)] = child
        return folders

    def _redo_hint(self, round_index: int) -> str:
        return (
            f"delete the folder {self.round_dir(round_index)} (and every later round folder) to "
            f"redo round {round_index}, then run again with --resume"
        )

    def write_manifest(self, round_index: int, content: Mapping[str, Any]) -> dict[str, Any]:
        """Commit a round: write its manifest atomically with a checksum of its own content.

        Args:
            round_index: the round.
            content: JSON-friendly fields (``round`` must equal ``round_index``).

        Returns:
            The manifest as written (with ``format`` and ``checksum``).
        """
        manifest = jsonable({"format": MANIFEST_FORMAT, **content})
        if manifest.get("round") != round_index:
            raise ValueError(f"manifest round {manifest.get('round')} != {round_index}")
        manifest["checksum"] = content_checksum(manifest)
        atomic_write_json(self.manifest_path(round_index), manifest)
        return dict(manifest)

    def read_manifest(self, round_index: int, verify_checkpoint: bool = True) -> dict[str, Any]:
        """Read and verify one round's manifest.

        Checks the JSON, the format, the checksum of its content, and (``verify_checkpoint``)
        that the checkpoint it names exists with the recorded sha256.

        Raises:
            StateError: with the folder to delete to redo the round.
        """
        path = self.manifest_path(round_index)
        fix = self._redo_hint(round_index)
        manifest = read_json(path, f"manifest of round {round_index}", fix)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise StateError(
                f"{path}: unknown manifest format {manifest.get('format')!r} (expected "
                f"{MANIFEST_FORMAT!r}); {fix}"
            )
        recorded = manifest.get("checksum")
        if recorded != content_checksum(manifest):
            raise StateError(
                f"{path}: checksum mismatch, the manifest was changed or damaged after it was "
                f"written; {fix}"
            )
        if manifest.get("round") != round_index:
            raise StateError(
                f"{path}: the manifest says round {manifest.get('round')} but lies in the folder "
                f"of round {round_index}; {fix}"
            )
        if verify_checkpoint and manifest.get("checkpoint"):
            checkpoint = self.checkpoint_path(manifest)
            if not checkpoint.is_file():
                raise StateError(f"{path}: the round's checkpoint {checkpoint} is missing; {fix}")
            digest = manifest.get("checkpoint_sha256")
            if digest and sha256_file(checkpoint) != digest:
                raise StateError(
                    f"{path}: the round's checkpoint {checkpoint} was changed after the round "
                    f"(sha256 differs from the manifest); {fix}"
                )
        return manifest

    def checkpoint_path(self, manifest: Mapping[str, Any]) -> Path:
        """The manifest's checkpoint as a path (stored relative to the run directory)."""
        path = Path(str(manifest["checkpoint"]))
        return path if path.is_absolute() else self.run_dir / path

    def completed_rounds(self, verify_checkpoints: bool = True) -> list[dict[str, Any]]:
        """Manifests of the rounds done so far: rounds 0..k, each verified.

        A trailing round folder without a manifest (an interrupted round) is not an error.

        Raises:
            StateError: a manifest does not verify, a round is missing before a completed one,
                or the labelled sets of consecutive rounds do not chain.
        """
        folders = self._round_folders()
        done: list[dict[str, Any]] = []
        for index in sorted(folders):
            if not (folders[index] / MANIFEST_NAME).exists():
                continue
            if index != len(done):
                missing = len(done)
                raise StateError(
                    f"{self.round_dir(index)} holds a completed round but round {missing} is not "
                    f"complete; {self._redo_hint(missing)}"
                )
            manifest = self.read_manifest(index, verify_checkpoints)
            previous = done[-1]["labelled_ids"] if done else []
            selected = [row["id"] for row in manifest.get("selected", [])]
            if manifest.get("labelled_ids") != [*previous, *selected]:
                raise StateError(
                    f"{self.manifest_path(index)}: its labelled ids are not those of round "
                    f"{index - 1} plus its selection; {self._redo_hint(index)}"
                )
            done.append(manifest)
        return done

    def clear_round(self, round_index: int) -> Path:
        """Remove a round folder (an interrupted attempt) and return its (now empty) path."""
        folder = self.round_dir(round_index)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder
