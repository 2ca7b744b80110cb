"""On-disk embedding cache keyed by (weights hash, ordered data ids, preprocessing signature).

One entry is two files named by the key's digest: ``<digest>.npy`` (the (N, D) array, float32
or, to halve the disk and page-cache footprint, float16) and ``<digest>.json`` (the key, the ids,
the shape, the storage dtype and a sha256 of the array bytes). The array is
written first and the sidecar last, each atomically (temp file + ``os.replace``), so the sidecar
is the commit marker: no sidecar = no entry (a crash between the two writes leaves a harmless
orphan array that the next ``put`` overwrites). An entry whose sidecar disagrees with the
requested key or with its array is *refused* with :class:`StateError` — never silently used.

Pools larger than RAM: :meth:`EmbeddingCache.writer` stores an entry batch by batch (the matrix
is never whole in memory) and ``get_entry(key, mmap=True)`` opens it as an
:class:`alframe._rows.OnDiskRows` memory-mapped store that CoreSet and XSSR read in chunks.
:func:`wants_memory_map` decides, for the recipe key ``embed.memory_map``, whether an entry is
opened that way.

Only NumPy and the standard library are imported, so strategies can read caches cheaply.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from alframe._rows import NpyRowWriter, OnDiskRows, storage_dtype
from alframe.errors import DataError, StateError

CACHE_FORMAT = "alframe.embeddings/1"

MEMORY_MAP_FRACTION = 0.25
"""``embed.memory_map: auto`` opens an entry as an on-disk store when its array file is larger
than this fraction of the available memory: a strategy needs room beside the matrix for its
own (N,)-sized and chunk-sized temporaries, and the page cache for the file itself."""

MemoryMap = bool | Literal["auto"]
"""The values of ``embed.memory_map``: True, False or ``"auto"``."""


def available_memory_bytes() -> int | None:
    """Memory the process can still take without swapping, in bytes, or None when unknown.

    ``MemAvailable`` of ``/proc/meminfo`` (Linux: free memory plus the page cache and other
    memory the kernel can reclaim), else the free physical pages (``os.sysconf``, which does not
    count the page cache, so it errs towards the store).
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def wants_memory_map(setting: MemoryMap, path: str | os.PathLike[str]) -> bool:
    """Whether ``embed.memory_map = setting`` opens the cache entry whose array is ``path`` as an
    :class:`~alframe._rows.OnDiskRows` store (instead of reading it into RAM).

    Args:
        setting: True (always), False (never) or ``"auto"``: when the file is larger than
            :data:`MEMORY_MAP_FRACTION` of :func:`available_memory_bytes` (never when there is
            no file yet or the available memory is unknown).
        path: the entry's ``.npy`` file (:meth:`EmbeddingCache.array_path`).

    Raises:
        ValueError: another ``setting``.
    """
    if isinstance(setting, bool):
        return setting
    if setting != "auto":
        raise ValueError(f"embed.memory_map must be auto, true or false, got {setting!r}")
    try:
        size = Path(path).stat().st_size
    except OSError:
        return False
    available = available_memory_bytes()
    return available is not None and size > MEMORY_MAP_FRACTION * available


def ids_hash(ids: Sequence[str]) -> str:
    """sha256 of an ordered list of ids (order matters: row i belongs to id i)."""
    payload = json.dumps([str(i) for i in ids], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def canonical_json(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces, tuples as lists)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def preprocessing_signature(
    image_size: Sequence[int],
    in_channels: int,
    normalization: Mapping[str, Any],
    concat_penultimate: bool,
    backbone: str,
    **extra: Any,
) -> str:
    """Canonical JSON of everything besides weights and ids that changes the embeddings.

    Args:
        image_size: (height, width) the images are resized to.
        in_channels: image channels.
        normalization: ``data.normalization`` as a dict.
        concat_penultimate: whether the penultimate stage is pooled too.
        backbone: ``mae`` / ``timm`` / ``segmentation`` / ...
        **extra: more JSON-able settings (e.g. eval augmentation steps, pooling version).

    Returns:
        A string usable as :attr:`EmbeddingKey.preprocessing`.
    """
    return canonical_json(
        {
            "image_size": [int(v) for v in image_size],
            "in_channels": int(in_channels),
            "normalization": dict(normalization),
            "concat_penultimate": bool(concat_penultimate),
            "backbone": str(backbone),
            **extra,
        }
    )


@dataclass(frozen=True)
class EmbeddingKey:
    """What an embedding array depends on.

    Attributes:
        weights_hash: sha256 of the encoder's state dict.
        ids_hash: :func:`ids_hash` of the ordered item ids.
        preprocessing: :func:`preprocessing_signature` text.
    """

    weights_hash: str
    ids_hash: str
    preprocessing: str

    @classmethod
    def create(cls, weights_hash: str, ids: Sequence[str], preprocessing: str) -> EmbeddingKey:
        """Key for ``ids`` (hashed in order)."""
        return cls(weights_hash, ids_hash(ids), preprocessing)

    def as_dict(self) -> dict[str, str]:
        """The three fields as a dict (stored in the sidecar)."""
        return {
            "weights_hash": self.weights_hash,
            "ids_hash": self.ids_hash,
            "preprocessing": self.preprocessing,
        }

    @property
    def digest(self) -> str:
        """sha256 of the whole key; names the entry's files."""
        return hashlib.sha256(canonical_json(self.as_dict()).encode("utf-8")).hexdigest()


def _array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _replace_atomically(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class EmbeddingCache:
    """A folder of cached embedding arrays.

    Args:
        folder: where entries live (created on the first ``put``).
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def array_path(self, key: EmbeddingKey) -> Path:
        """``<folder>/<digest>.npy``."""
        return self.folder / f"{key.digest[:40]}.npy"

    def sidecar_path(self, key: EmbeddingKey) -> Path:
        """``<folder>/<digest>.json``."""
        return self.folder / f"{key.digest[:40]}.json"

    def _stale(self, key: EmbeddingKey, why: str) -> StateError:
        return StateError(
            f"embedding cache entry {self.array_path(key)} is stale or corrupt ({why}); delete "
            f"{self.array_path(key)} and {self.sidecar_path(key)} or recompute the embeddings "
            "(embed_pool(..., recompute=True) / `alframe embed --recompute`)"
        )

    def get_entry(
        self, key: EmbeddingKey, *, mmap: bool = False, verify: bool = True
    ) -> tuple[np.ndarray, list[str]] | None:
        """The stored ``(array (N, D), ids)`` for ``key``, or None when absent.

        Args:
            key: the entry's key.
            mmap: False: the array in RAM as float32 (a float16 entry is converted). True: an
                :class:`alframe._rows.OnDiskRows` memory-mapped store (float32 or float16 on
                disk, read as float32 chunk by chunk) for pools larger than RAM.
            verify: check the sha256 of the array bytes (one streaming pass); the sidecar, the
                ids, the shape and the dtype are always checked.

        Raises:
            StateError: the entry exists but its sidecar is unreadable, records another key,
                records ids that do not hash to ``key.ids_hash``, or disagrees with the array
                (missing, unreadable, other shape / dtype / checksum).
        """
        sidecar = self.sidecar_path(key)
        if not sidecar.is_file():
            return None
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise self._stale(key, f"unreadable sidecar: {err}") from None
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
            raise self._stale(key, "the sidecar is not an alframe embedding-cache record")
        if meta.get("key") != key.as_dict():
            raise self._stale(key, "it was computed for another key")
        ids = meta.get("ids")
        if not isinstance(ids, list) or ids_hash(ids) != key.ids_hash:
            raise self._stale(key, "its recorded ids are not the requested ones")
        path = self.array_path(key)
        if not path.is_file():
            raise self._stale(key, "the array file is missing")
        stored_dtype = meta.get("dtype", "float32")  # entries before float16 have no choice
        try:
            array: Any = OnDiskRows(path) if mmap else np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, DataError) as err:
            raise self._stale(key, f"unreadable array: {err}") from None
        on_disk_dtype = array.storage_dtype if mmap else getattr(array, "dtype", None)
        expected_shape = meta.get("shape")
        if list(getattr(array, "shape", ())) != expected_shape:
            raise self._stale(
                key,
                f"array shape {getattr(array, 'shape', None)} but sidecar says {expected_shape}",
            )
        if (
            array.ndim != 2
            or array.shape[0] != len(ids)
            or on_disk_dtype not in (np.float32, np.float16)
            or np.dtype(on_disk_dtype).name != stored_dtype
        ):
            raise self._stale(
                key,
                f"array {array.shape} {on_disk_dtype} does not hold {len(ids)} {stored_dtype} rows",
            )
        if verify:
            checksum = array.sha256() if mmap else _array_sha256(array)
            if checksum != meta.get("sha256"):
                if mmap:
                    array.close()
                raise self._stale(key, "the array's checksum does not match its sidecar")
        if not mmap and array.dtype != np.float32:
            array = array.astype(np.float32)
        return array, [str(i) for i in ids]

    def get(self, key: EmbeddingKey, *, mmap: bool = False) -> np.ndarray | None:
        """The stored (N, D) float32 array for ``key`` (an :class:`~alframe._rows.OnDiskRows`
        store with ``mmap=True``), or None on a miss.

        Raises:
            StateError: see :meth:`get_entry`.
        """
        entry = self.get_entry(key, mmap=mmap)
        return None if entry is None else entry[0]

    def put(
        self,
        key: EmbeddingKey,
        ids: Sequence[str],
        array: np.ndarray,
        info: Mapping[str, Any] | None = None,
        dtype: str = "float32",
    ) -> Path:
        """Store ``array`` (row i = ``ids[i]``) under ``key``, replacing any previous entry.

        Args:
            key: the entry's key; ``key.ids_hash`` must be the hash of ``ids``.
            ids: item ids in row order, N.
            array: (N, D) embeddings.
            info: extra JSON-able facts for humans (encoder name, source file, ...).
            dtype: storage dtype, ``"float32"`` (default) or ``"float16"`` (half the disk;
                values are rounded to float16, selection then runs on the rounded values).

        Returns:
            The array file's path.

        Raises:
            ValueError: ``ids`` do not match the key or the array, or an unknown dtype.
        """
        ids = [str(i) for i in ids]
        data = np.asarray(array)
        if data.ndim != 2 or data.shape[0] != len(ids):
            raise ValueError(f"array must be (N={len(ids)}, D), got {tuple(data.shape)}")
        with self.writer(key, ids, data.shape[1], info=info, dtype=dtype) as writer:
            writer.write(data)
        return self.array_path(key)

    def writer(
        self,
        key: EmbeddingKey,
        ids: Sequence[str],
        dim: int,
        *,
        info: Mapping[str, Any] | None = None,
        dtype: str = "float32",
    ) -> CacheWriter:
        """A writer that stores the entry batch by batch (pools larger than RAM).

        Use as a context manager: ``with cache.writer(key, ids, D) as w: w.write(batch)`` for
        consecutive row batches; the entry exists once the block exits without an error and
        every row was written (array renamed into place, then the sidecar), and not at all
        otherwise. Any previous entry of ``key`` is invalidated when the writer is created.

        Args:
            key: the entry's key; ``key.ids_hash`` must be the hash of ``ids``.
            ids: item ids in row order, N.
            dim: D.
            info: extra JSON-able facts for humans.
            dtype: ``"float32"`` or ``"float16"``.

        Raises:
            ValueError: ``ids`` do not match the key, or an unknown dtype.
        """
        ids = [str(i) for i in ids]
        if ids_hash(ids) != key.ids_hash:
            raise ValueError("ids do not hash to key.ids_hash; build the key from these ids")
        try:
            stored = storage_dtype(dtype)
        except (DataError, TypeError) as err:
            raise ValueError(str(err)) from None
        self.folder.mkdir(parents=True, exist_ok=True)
        # Invalidate first: if the array write fails after an old sidecar survived, the old
        # sidecar's checksum would refuse the new array anyway, but a missing sidecar is clearer.
        self.sidecar_path(key).unlink(missing_ok=True)
        return CacheWriter(self, key, ids, int(dim), stored.name, dict(info or {}))

    def delete(self, key: EmbeddingKey) -> bool:
        """Remove an entry's files; returns whether anything was removed."""
        removed = False
        for path in (self.sidecar_path(key), self.array_path(key)):
            if path.exists():
                path.unlink()
                removed = True
        return removed


class CacheWriter:
    """Writes one cache entry batch by batch; see :meth:`EmbeddingCache.writer`."""

    def __init__(
        self,
        cache: EmbeddingCache,
        key: EmbeddingKey,
        ids: list[str],
        dim: int,
        dtype: str,
        info: dict[str, Any],
    ) -> None:
        self.cache, self.key, self.ids, self.info = cache, key, ids, info
        self._rows = NpyRowWriter(cache.array_path(key), len(ids), dim, dtype)

    @property
    def rows_written(self) -> int:
        """Rows written so far."""
        return self._rows.rows_written

    def write(self, batch: np.ndarray) -> None:
        """Appends (k, D) rows (the next k ids)."""
        try:
            self._rows.write(batch)
        except DataError as err:
            self.abort()
            raise ValueError(str(err)) from None

    def commit(self) -> Path:
        """Renames the array into place, then writes the sidecar (the commit marker)."""
        if self._rows.rows_written != len(self.ids):
            written = self._rows.rows_written
            self.abort()
            raise ValueError(
                f"only {written} of {len(self.ids)} rows were written; the entry was not stored"
            )
        path = self._rows.commit()
        meta = {
            "format": CACHE_FORMAT,
            "key": self.key.as_dict(),
            "shape": [len(self.ids), self._rows.dim],
            "dtype": self._rows.dtype.name,
            "sha256": self._rows.sha256,
            "info": self.info,
            "ids": self.ids,
        }
        text = (canonical_json(meta) + "\n").encode("utf-8")
        _replace_atomically(self.cache.sidecar_path(self.key), lambda handle: handle.write(text))
        return path

    def abort(self) -> None:
        """Drops what was written; no entry is stored."""
        self._rows.abort()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.commit()
