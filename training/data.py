"""MNIST from its four IDX files: find, download, verify, decode.

The same code reads a local folder on a laptop and the folder Azure ML mounts for a
``uri_folder`` input. Every file is checked before use: gzip integrity, IDX magic number,
dimensions, item count, and the SHA-256 of the *decompressed* content (which identifies
the data whatever gzip produced a mirror's archive).

Where the data comes from, first match wins:

1. ``data_folder`` (``--data-folder``), then the ``MNIST_DATA_DIR`` environment variable:
   a folder the user controls. Missing or bad files there are an error; we never write
   into it (on Azure ML it is a read-only mount).
2. Otherwise the download cache (``MNIST_CACHE_DIR``, default ``~/.cache/tf-mnist-azureml``):
   missing files are downloaded from public mirrors, tried in turn, to a temporary file
   that only replaces the cached copy once it verifies.

This module needs only numpy, so tools that never train can still validate data.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "MNIST_DATA_DIR"
CACHE_DIR_ENV = "MNIST_CACHE_DIR"
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "tf-mnist-azureml" / "mnist"

# Public mirrors serving the canonical archives, in the order tried. The original site
# (last) now often refuses automated downloads; Azure Open Datasets is the copy the
# original Azure ML article registered as a dataset.
MIRRORS: tuple[str, ...] = (
    "https://azureopendatastorage.blob.core.windows.net/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

IMAGE_MAGIC = 2051  # IDX: unsigned byte, 3 dimensions
LABEL_MAGIC = 2049  # IDX: unsigned byte, 1 dimension


@dataclass(frozen=True)
class IdxFile:
    """What one MNIST file must contain."""

    name: str  # decompressed file name; the archive is name + ".gz"
    magic: int
    count: int
    sha256: str  # of the decompressed content

    @property
    def archive(self) -> str:
        return self.name + ".gz"


FILES: dict[str, IdxFile] = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte",
        IMAGE_MAGIC,
        60_000,
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte",
        LABEL_MAGIC,
        60_000,
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte",
        IMAGE_MAGIC,
        10_000,
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte",
        LABEL_MAGIC,
        10_000,
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

ROWS = COLS = 28


class DataError(Exception):
    """MNIST could not be found, fetched or verified. The message says what to do."""


@dataclass(frozen=True)
class Mnist:
    """Decoded MNIST: uint8 images (N, 28, 28) and uint8 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Path


def fingerprint(data: Mnist) -> str:
    """SHA-256 of the decoded arrays, in order: names the data a model was trained on, wherever
    it was read from (a checkpoint made from other data is not resumed)."""
    digest = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_test, data.y_test):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _fix_hint(spec: IdxFile) -> str:
    return (
        f"Replace it with a good copy of {spec.archive} (see README, 'Data'), or delete it "
        f"and run without --data-folder/{DATA_DIR_ENV} to download a verified copy."
    )


def decode_idx(raw: bytes, spec: IdxFile, where: Path) -> np.ndarray:
    """Check and decode the decompressed bytes of one IDX file."""
    header = 16 if spec.magic == IMAGE_MAGIC else 8
    if len(raw) < header:
        raise DataError(
            f"{where} is not an MNIST IDX file: {len(raw)} bytes is shorter than its "
            f"{header}-byte header. {_fix_hint(spec)}"
        )
    magic, count = np.frombuffer(raw[:8], dtype=">u4")
    if magic != spec.magic:
        raise DataError(
            f"{where} has IDX magic number {magic}, expected {spec.magic} for "
            f"{spec.name}: the file is corrupt or is another file renamed. {_fix_hint(spec)}"
        )
    if count != spec.count:
        raise DataError(
            f"{where} says it holds {count} items, expected {spec.count}. {_fix_hint(spec)}"
        )
    shape: tuple[int, ...] = (spec.count,)
    if spec.magic == IMAGE_MAGIC:
        rows, cols = np.frombuffer(raw[8:16], dtype=">u4")
        if (rows, cols) != (ROWS, COLS):
            raise DataError(
                f"{where} has {rows}x{cols} images, expected {ROWS}x{COLS}. {_fix_hint(spec)}"
            )
        shape = (spec.count, ROWS, COLS)
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{where} is {len(raw)} bytes decompressed, expected {expected}: it is "
            f"{'truncated' if len(raw) < expected else 'padded'}. {_fix_hint(spec)}"
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise DataError(
            f"{where} has the right shape but the wrong content (SHA-256 {digest[:12]}..., "
            f"expected {spec.sha256[:12]}...). {_fix_hint(spec)}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: Path, spec: IdxFile) -> np.ndarray:
    """Read one IDX file (gzip-compressed or not) and verify it against ``spec``."""
    try:
        with path.open("rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise DataError(f"Cannot read {path}: {exc.strerror}. {_fix_hint(spec)}") from exc
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(
                f"{path} is not a complete gzip archive ({exc}); it was probably cut short "
                f"by an interrupted copy or download. {_fix_hint(spec)}"
            ) from exc
    return decode_idx(data, spec, path)


def _find(folder: Path, spec: IdxFile) -> Path | None:
    """The file for ``spec`` in ``folder`` or one level below (how some mounts nest it)."""
    for name in (spec.archive, spec.name):
        for candidate in (folder / name, *sorted(folder.glob(f"*/{name}"))):
            if candidate.is_file():
                return candidate
    return None


def download(spec: IdxFile, cache_dir: Path, mirrors: Sequence[str] = MIRRORS) -> Path:
    """Fetch ``spec`` into ``cache_dir`` from the first mirror that serves a verified copy.

    The archive is written to a temporary file beside its destination and renamed into
    place only after it verified, so an interrupted download leaves nothing behind.
    """
    from tqdm import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / spec.archive
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror + spec.archive
        fd, tmp_name = tempfile.mkstemp(prefix=spec.archive + ".", suffix=".part", dir=cache_dir)
        tmp = Path(tmp_name)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "tf-mnist-azureml"})
            with (
                urllib.request.urlopen(request, timeout=30) as response,
                os.fdopen(fd, "wb") as out,
            ):
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=spec.archive) as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))
            read_idx(tmp, spec)
            tmp.replace(target)
            return target
        except (urllib.error.URLError, OSError, TimeoutError, DataError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"Could not download {spec.archive} from any of {len(mirrors)} MNIST mirrors "
        f"({'; '.join(failures)}). If this machine is offline, copy the four MNIST .gz files "
        f"to a folder and point {DATA_DIR_ENV}=/that/folder or --data-folder /that/folder at it."
    )


def resolve_folder(data_folder: str | os.PathLike[str] | None) -> Path | None:
    """The user-controlled folder to read from, or None to use the download cache."""
    chosen = data_folder or os.environ.get(DATA_DIR_ENV) or None
    return Path(chosen).expanduser() if chosen else None


def load_mnist(
    data_folder: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] = MIRRORS,
) -> Mnist:
    """Load and verify MNIST; see the module docstring for where it is looked for."""
    folder = resolve_folder(data_folder)
    arrays: dict[str, np.ndarray] = {}
    if folder is not None:
        if not folder.is_dir():
            raise DataError(
                f"MNIST folder {folder} does not exist. Point --data-folder or {DATA_DIR_ENV} "
                "at the folder holding the four MNIST .gz files, or unset both to download them."
            )
        missing = [s.archive for s in FILES.values() if _find(folder, s) is None]
        if missing:
            raise DataError(
                f"MNIST folder {folder} lacks {', '.join(missing)}. Copy the missing files "
                f"there, or unset --data-folder and {DATA_DIR_ENV} to download verified copies."
            )
        for key, spec in FILES.items():
            path = _find(folder, spec)
            assert path is not None
            arrays[key] = read_idx(path, spec)
        source = folder
    else:
        cache = Path(cache_dir or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
        for key, spec in FILES.items():
            path = _find(cache, spec) if cache.is_dir() else None
            if path is not None:
                try:
                    arrays[key] = read_idx(path, spec)
                    continue
                except DataError:
                    path.unlink()  # our own cache: a bad copy is replaced, never used
            arrays[key] = read_idx(download(spec, cache, mirrors), spec)
        source = cache
    return Mnist(
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        source,
    )
