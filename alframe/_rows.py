"""Embedding matrices larger than RAM: a chunked ``.npy`` writer and a memory-mapped row reader.

:class:`OnDiskRows` opens an (N, D) float32 or float16 ``.npy`` file as a read-only memory map and
behaves like a float32 array for the few operations the selection code needs: ``shape``,
``dtype`` (always float32: the compute dtype), slicing, gathering rows by index and ``@`` with a
vector or a thin matrix (computed chunk by chunk). Every access copies the rows it reads into a
float32 array; pages the map touched are handed back to the kernel (``madvise(MADV_DONTNEED)``)
once more than ``resident_limit_bytes`` have been touched, so the process's resident memory stays
bounded by that limit instead of growing to the whole file (the pages stay in the page cache, so
the next pass reads them from RAM when the machine has room, from disk otherwise).

:class:`NpyRowWriter` writes such a file batch by batch (never the whole matrix in memory),
to a temporary file renamed into place on :meth:`NpyRowWriter.commit`, with a sha256 of the
array bytes computed on the way.

Only NumPy and the standard library, so that ``types``, ``scoring`` and ``index`` can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from alframe.errors import DataError

STORAGE_DTYPES = ("float32", "float16")
DEFAULT_CHUNK_ROWS = 16_384
"""Rows per chunk of a streaming pass (16 MiB of float32 at D = 256)."""
DEFAULT_RESIDENT_LIMIT = 256 * 1024**2
PREAD_MIN_BYTES = 1024**2
"""Contiguous reads at least this long use ``pread`` instead of the memory map."""
"""Bytes of the file that may be mapped in before the touched pages are released."""
_MAPPED_PER_FAULT = 2 * 1024**2
"""Bytes a fault on a cached page may map (Linux maps the whole page-cache folio, up to 2 MiB
with large folios): what reading one row may cost in resident memory."""


def storage_dtype(dtype: Any) -> np.dtype[Any]:
    """The numpy dtype of a storage dtype name (``"float32"`` or ``"float16"``)."""
    name = np.dtype(dtype).name
    if name not in STORAGE_DTYPES:
        raise DataError(f"embedding storage dtype must be one of {STORAGE_DTYPES}, got {name!r}")
    return np.dtype(name)


class OnDiskRows:
    """A read-only (N, D) ``.npy`` matrix on disk that reads as float32, chunk by chunk.

    Args:
        path: a 2-D C-order float32 or float16 ``.npy`` file.
        chunk_rows: rows per chunk of the streaming passes (``@``).
        resident_limit_bytes: mapped bytes after which touched pages are released.
        pread_min_bytes: contiguous reads at least this long use ``pread`` (a copy from the
            page cache, nothing mapped) instead of the map; streaming passes always do.

    Attributes:
        path: the file.
        storage_dtype: dtype on disk (float32 or float16).
        shape: (N, D).
        dtype: float32, the dtype of everything read from it.
    """

    ndim = 2

    def __init__(
        self,
        path: str | os.PathLike[str],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        resident_limit_bytes: int = DEFAULT_RESIDENT_LIMIT,
        pread_min_bytes: int = PREAD_MIN_BYTES,
    ) -> None:
        self.path = Path(path)
        self.pread_min_bytes = int(pread_min_bytes)
        if chunk_rows < 1:
            raise DataError(f"chunk_rows must be a positive integer, got {chunk_rows}")
        with open(self.path, "rb") as handle:
            try:
                version = np.lib.format.read_magic(handle)
                read_header = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(handle)
            except ValueError as err:
                raise DataError(f"{self.path} is not a readable .npy file: {err}") from None
            offset = handle.tell()
        if len(shape) != 2 or fortran:
            raise DataError(f"{self.path} must hold a C-order 2-D array, got shape {shape}")
        self.storage_dtype = storage_dtype(dtype)
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)
        self.chunk_rows = int(chunk_rows)
        self.resident_limit_bytes = int(resident_limit_bytes)
        expected = offset + self.shape[0] * self.shape[1] * self.storage_dtype.itemsize
        size = self.path.stat().st_size
        if size < expected:
            raise DataError(f"{self.path} is truncated: {size} bytes, the header needs {expected}")
        self._offset = offset
        self._lock = threading.Lock()
        self._touched = 0
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._map: mmap.mmap | None = None
        self._rows: np.ndarray
        if self.shape[0] * self.shape[1] == 0:
            self._rows = np.empty(self.shape, dtype=self.storage_dtype)
        else:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._rows = np.frombuffer(
                self._map,
                dtype=self.storage_dtype,
                count=self.shape[0] * self.shape[1],
                offset=offset,
            ).reshape(self.shape)

    # ------------------------------------------------------------------ array-like protocol

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"OnDiskRows({str(self.path)!r}, shape={self.shape}, storage={self.storage_dtype})"

    @property
    def size(self) -> int:
        """N·D."""
        return self.shape[0] * self.shape[1]

    @property
    def nbytes_on_disk(self) -> int:
        """Bytes of the array data in the file."""
        return self.size * self.storage_dtype.itemsize

    def __getitem__(self, key: Any) -> np.ndarray:
        """Rows as a new float32 array: ``rows[i]`` (D,), ``rows[a:b]`` and ``rows[index_array]``
        (k, D), ``rows[index_array, columns]`` / ``rows[a:b, columns]`` too."""
        columns: Any = slice(None)
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IndexError(f"OnDiskRows takes at most 2 indices, got {len(key)}")
            key, columns = key
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self._gather(np.arange(start, stop, step))[:, columns]
            return self._read_range(start, max(start, stop))[:, columns]
        if isinstance(key, int | np.integer) and not isinstance(key, bool):
            row = int(key)
            if row < 0:
                row += self.shape[0]
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"row {key} out of range for {self.shape[0]} rows")
            return self._read_range(row, row + 1)[0][columns]
        rows = np.asarray(key)
        if rows.dtype == np.bool_:
            rows = np.flatnonzero(rows)
        return self._gather(rows.astype(np.int64, copy=False))[..., columns]

    def __matmul__(self, other: Any) -> np.ndarray:
        """``rows @ v`` (N,) or ``rows @ M`` (N, A), float32, one streaming pass."""
        operand = np.asarray(other, dtype=np.float32)
        if operand.ndim not in (1, 2) or operand.shape[0] != self.shape[1]:
            raise ValueError(f"cannot multiply {self.shape} by {operand.shape}")
        result = np.empty((self.shape[0], *operand.shape[1:]), dtype=np.float32)
        # Many small memory-bound products: waking a second BLAS thread for each costs more than
        # it brings (3-10× slower on a busy 2-core machine); one thread runs at the in-RAM speed.
        with _one_blas_thread():
            for start, block in self._reused_chunks():
                np.matmul(block, operand, out=result[start : start + block.shape[0]])
        return result

    # ------------------------------------------------------------------ reading

    def chunks(self, chunk_rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` pairs covering the rows in order; ``block`` is (≤ chunk, D) float32.

        The block is a fresh array each time (safe to keep).
        """
        step = self.chunk_rows if chunk_rows is None else int(chunk_rows)
        for start in range(0, self.shape[0], step):
            yield start, self._read_range(start, min(start + step, self.shape[0]))

    def _reused_chunks(self, chunk_rows: int = 4_096) -> Iterator[tuple[int, np.ndarray]]:
        """Like :meth:`chunks`, but every block lives in the same buffers (valid until the next
        one): no fresh allocation, hence no page faults, per chunk. For internal passes."""
        raw = np.empty((chunk_rows, self.shape[1]), dtype=self.storage_dtype)
        converted = raw if raw.dtype == np.float32 else np.empty(raw.shape, dtype=np.float32)
        for start in range(0, self.shape[0], chunk_rows):
            stop = min(start + chunk_rows, self.shape[0])
            count = stop - start
            self._pread_into(start, raw[:count])
            if converted is not raw:
                np.copyto(converted[:count], raw[:count], casting="unsafe")
            yield start, converted[:count]

    def _pread_into(self, start: int, out: np.ndarray) -> None:
        """Reads rows ``start : start + len(out)`` into ``out`` (storage dtype, C-contiguous)."""
        view = out.data.cast("B")
        offset = self._offset + start * self.shape[1] * self.storage_dtype.itemsize
        done = 0
        while done < view.nbytes:
            got = os.preadv(self._file.fileno(), [view[done:]], offset + done)
            if got <= 0:
                raise DataError(f"{self.path}: unexpected end of file")
            done += got

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        row_bytes = self.shape[1] * self.storage_dtype.itemsize
        n_bytes = (stop - start) * row_bytes
        if n_bytes >= self.pread_min_bytes:
            # Long ranges are read with pread, not through the map: a copy from the page cache
            # without a page fault per folio (4× faster on a 10 GB pass) and nothing mapped.
            raw = np.empty((stop - start, self.shape[1]), dtype=self.storage_dtype)
            self._pread_into(start, raw)
            return raw if raw.dtype == np.float32 else raw.astype(np.float32)
        block = np.array(self._rows[start:stop], dtype=np.float32)
        # A fault maps the whole page-cache folio around it, however few rows are read.
        self._touch(n_bytes + _MAPPED_PER_FAULT)
        return block

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        if rows.size and (rows.min() < -self.shape[0] or rows.max() >= self.shape[0]):
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        result = np.empty((*rows.shape, self.shape[1]), dtype=np.float32)
        flat = rows.reshape(-1)
        if flat.size == 0:
            return result
        out = result.reshape(-1, self.shape[1])
        row_bytes = self.shape[1] * self.storage_dtype.itemsize
        flat = np.where(flat < 0, flat + self.shape[0], flat)
        first, last = int(flat.min()), int(flat.max())
        span = last - first + 1
        if span * row_bytes >= self.pread_min_bytes and span <= 2 * flat.size:
            # Dense rows (e.g. all remaining candidates): one sequential read of their span.
            ascending = bool(np.all(flat[1:] >= flat[:-1]))
            order = np.arange(flat.size) if ascending else np.argsort(flat, kind="stable")
            ordered = flat if ascending else flat[order]
            for begin in range(first, last + 1, self.chunk_rows):
                end = min(begin + self.chunk_rows, last + 1)
                low, high = np.searchsorted(ordered, [begin, end])
                if high > low:
                    block = self._read_range(begin, end)
                    out[order[low:high]] = block[ordered[low:high] - begin]
            return result
        # Cut the gather into pieces that touch at most ~resident_limit / 2 folios each (an upper
        # bound: a new folio is counted whenever the next row lies in another one), and release
        # the touched pages between pieces.
        folio = (flat % self.shape[0]) * row_bytes // _MAPPED_PER_FAULT
        changes = np.concatenate(([1], np.cumsum(folio[1:] != folio[:-1]) + 1))
        per_piece = max(1, self.resident_limit_bytes // (2 * _MAPPED_PER_FAULT))
        cuts = np.searchsorted(changes, np.arange(per_piece, int(changes[-1]), per_piece))
        bounds = [0, *cuts.tolist(), flat.size]
        for begin, end in itertools.pairwise(bounds):
            if end <= begin:
                continue
            out[begin:end] = self._rows[flat[begin:end]]
            touched = int(changes[end - 1] - changes[begin]) + 1
            self._touch(touched * _MAPPED_PER_FAULT + (end - begin) * row_bytes)
        return result

    def _touch(self, n_bytes: int) -> None:
        with self._lock:
            self._touched += n_bytes
            if self._touched < self.resident_limit_bytes:
                return
            self._touched = 0
            self.release()

    def release(self) -> None:
        """Hands every mapped page back to the kernel (resident memory drops; data stays on
        disk and, while there is room, in the page cache)."""
        if self._map is not None and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        """Unmaps the file (the reader is unusable afterwards)."""
        self._rows = np.empty((0, self.shape[1]), dtype=self.storage_dtype)
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is still held: it closes with it
                self._map.close()
            self._map = None
        self._file.close()

    def __enter__(self) -> OnDiskRows:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_array(self) -> np.ndarray:
        """The whole matrix in RAM as (N, D) float32 (only for pools that fit)."""
        return self[:]

    def sha256(self) -> str:
        """sha256 of the array bytes as stored (the cache's checksum), in one streaming pass."""
        digest = hashlib.sha256()
        row_bytes = self.shape[1] * self.storage_dtype.itemsize
        for start in range(0, self.shape[0], self.chunk_rows):
            stop = min(start + self.chunk_rows, self.shape[0])
            digest.update(np.ascontiguousarray(self._rows[start:stop]).data.cast("B"))
            self._touch((stop - start) * row_bytes)
        return digest.hexdigest()

    def non_finite_rows(self) -> np.ndarray:
        """(M,) int64 rows holding NaN or inf, found in one streaming pass."""
        bad = [
            start + np.flatnonzero(~np.isfinite(block.sum(axis=1, dtype=np.float64)))
            for start, block in self._reused_chunks()
        ]
        return np.concatenate(bad).astype(np.int64) if bad else np.empty(0, dtype=np.int64)


def _one_blas_thread() -> contextlib.AbstractContextManager[Any]:
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def is_on_disk(array: Any) -> bool:
    """Whether ``array`` is an :class:`OnDiskRows` (the chunked, larger-than-RAM path)."""
    return isinstance(array, OnDiskRows)


class NpyRowWriter:
    """Writes an (N, D) ``.npy`` file batch by batch; atomic on :meth:`commit`.

    Args:
        path: final file path (written as ``.<name>.<pid>.tmp`` next to it until committed).
        n_rows: N, known up front (the header is written first).
        dim: D.
        dtype: ``"float32"`` or ``"float16"`` (values are cast on write).

    Attributes:
        sha256: hex digest of the array bytes (as stored), available after :meth:`commit`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        n_rows: int,
        dim: int,
        dtype: str | np.dtype[Any] = "float32",
    ) -> None:
        self.path = Path(path)
        self.n_rows, self.dim = int(n_rows), int(dim)
        if self.n_rows < 0 or self.dim < 1:
            raise DataError(f"cannot write a ({n_rows}, {dim}) embedding matrix")
        self.dtype = storage_dtype(dtype)
        self.rows_written = 0
        self.sha256 = ""
        self._hash = hashlib.sha256()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self._handle: Any = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.n_rows, self.dim),
        }
        np.lib.format.write_array_header_1_0(self._handle, header)

    def write(self, block: np.ndarray) -> None:
        """Appends (k, D) rows (any real dtype; cast to the storage dtype)."""
        if self._handle is None:
            raise DataError(f"{self.path}: the writer is already committed or aborted")
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise DataError(f"expected (k, {self.dim}) rows, got {tuple(data.shape)}")
        if self.rows_written + data.shape[0] > self.n_rows:
            raise DataError(
                f"{self.path}: {self.rows_written + data.shape[0]} rows written, the header "
                f"says {self.n_rows}"
            )
        payload = data.data.cast("B")
        self._hash.update(payload)
        self._handle.write(payload)
        self.rows_written += data.shape[0]

    def commit(self) -> Path:
        """Flushes, fsyncs and renames the file into place; returns the final path."""
        if self._handle is None:
            raise DataError(f"{self.path}: the writer is already committed or aborted")
        if self.rows_written != self.n_rows:
            self.abort()
            raise DataError(
                f"{self.path}: only {self.rows_written} of {self.n_rows} rows were written; "
                "nothing was stored"
            )
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        os.replace(self._tmp, self.path)
        self.sha256 = self._hash.hexdigest()
        return self.path

    def abort(self) -> None:
        """Drops the temporary file (the final path is untouched)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> NpyRowWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None or (self._handle is not None and self.rows_written != self.n_rows):
            self.abort()
        elif self._handle is not None:
            self.commit()
