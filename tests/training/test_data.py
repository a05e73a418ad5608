"""The MNIST loader on the real files and on corrupted copies of them."""

from __future__ import annotations

import gzip
import http.server
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from training.data import FILES, DataError, load_mnist


def copy_mnist(source: Path, destination: Path) -> Path:
    destination.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        shutil.copyfile(source / spec.archive, destination / spec.archive)
    return destination


def test_real_mnist_loads_with_canonical_shapes_and_order(mnist_dir):
    data = load_mnist(mnist_dir)
    assert data.x_train.shape == (60_000, 28, 28) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (10_000, 28, 28)
    assert data.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert np.bincount(data.y_train).min() > 5_000  # every digit is there


def test_the_data_fingerprint_names_the_content_not_the_folder(mnist_dir, tmp_path):
    """Checkpoints record it: the same MNIST from another folder resumes, and a change in how
    it is computed would refuse every existing checkpoint, so its value is written out."""
    from training.data import fingerprint

    expected = "2eb4d82c94e1e65af5a565df335e810e7cfbcdeb8ce2cf9674792583d7c4266b"
    assert fingerprint(load_mnist(mnist_dir)) == expected
    assert fingerprint(load_mnist(copy_mnist(mnist_dir, tmp_path / "elsewhere"))) == expected


def test_files_one_level_down_are_found(mnist_dir, tmp_path):
    """Azure ML mounts of a registered folder may nest it one level down."""
    copy_mnist(mnist_dir, tmp_path / "mnist")
    assert load_mnist(tmp_path).y_test[:3].tolist() == [7, 2, 1]


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated-gzip":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped-pixel":
        raw = bytearray(gzip.decompress(data))
        raw[5_000] ^= 0xFF
        path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    elif how == "short-content":
        path.write_bytes(gzip.compress(gzip.decompress(data)[:-784], compresslevel=1))
    elif how == "not-gzip":
        path.write_bytes(b"<html>404 Not Found</html>")


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("truncated-gzip", "not a complete gzip archive"),
        ("flipped-pixel", "wrong content (SHA-256"),
        ("short-content", "it is truncated"),
        ("not-gzip", "IDX magic number"),
    ],
)
def test_corrupt_file_is_named_with_what_to_do(mnist_dir, tmp_path, how, expected):
    folder = copy_mnist(mnist_dir, tmp_path / "data")
    target = folder / FILES["test_images"].archive
    _corrupt(target, how)
    before = target.read_bytes()
    with pytest.raises(DataError) as info:
        load_mnist(folder)
    message = str(info.value)
    assert str(target) in message and expected in message
    assert "Replace it with a good copy" in message
    assert target.read_bytes() == before  # the user's file is never touched


def test_swapped_files_fail_on_magic_number(mnist_dir, tmp_path):
    folder = copy_mnist(mnist_dir, tmp_path / "data")
    images, labels = (folder / FILES[k].archive for k in ("test_images", "test_labels"))
    images.write_bytes(labels.read_bytes())
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        load_mnist(folder)


def test_missing_files_and_folder_say_how_to_fix(mnist_dir, tmp_path):
    folder = copy_mnist(mnist_dir, tmp_path / "data")
    (folder / FILES["train_labels"].archive).unlink()
    with pytest.raises(DataError, match=r"lacks train-labels-idx1-ubyte\.gz.*MNIST_DATA_DIR"):
        load_mnist(folder)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")


def test_cli_reports_bad_data_in_one_paragraph_without_traceback(mnist_dir, tmp_path, run_python):
    folder = copy_mnist(mnist_dir, tmp_path / "data")
    _corrupt(folder / FILES["train_images"].archive, "truncated-gzip")
    result = run_python(
        "-m",
        "training.train",
        "--data-folder",
        str(folder),
        "--epochs",
        "1",
        "--output-dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte.gz" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out" / "model").exists()


class _Mirror:
    """Loopback HTTP servers standing in for public mirrors."""

    def __init__(self, root: Path) -> None:
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=str(root), **k
        )
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirrors(mnist_dir, tmp_path):
    empty = _Mirror(tmp_path / "empty-mirror")
    (tmp_path / "empty-mirror").mkdir()
    bad_root = copy_mnist(mnist_dir, tmp_path / "bad-mirror")
    for spec in FILES.values():
        _corrupt(bad_root / spec.archive, "flipped-pixel" if "images" in spec.name else "not-gzip")
    bad = _Mirror(bad_root)
    good = _Mirror(copy_mnist(mnist_dir, tmp_path / "good-mirror"))
    yield empty.url, bad.url, good.url
    for mirror in (empty, bad, good):
        mirror.close()


def test_download_tries_mirrors_in_turn_and_keeps_only_verified_files(
    mirrors, tmp_path, monkeypatch
):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    data = load_mnist(cache_dir=cache, mirrors=mirrors)
    assert data.y_train[:3].tolist() == [5, 0, 4]
    assert sorted(p.name for p in cache.iterdir()) == sorted(s.archive for s in FILES.values())


def test_corrupt_cached_file_is_replaced_by_a_fresh_download(
    mirrors, mnist_dir, tmp_path, monkeypatch
):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    cache = copy_mnist(mnist_dir, tmp_path / "cache")
    _corrupt(cache / FILES["test_labels"].archive, "truncated-gzip")
    assert load_mnist(cache_dir=cache, mirrors=mirrors).y_test[:2].tolist() == [7, 2]


def test_offline_download_fails_cleanly_and_says_where_to_point(mirrors, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    empty, bad, _good = mirrors
    with pytest.raises(DataError) as info:
        load_mnist(cache_dir=cache, mirrors=[empty, bad, "http://127.0.0.1:9/"])
    assert "MNIST_DATA_DIR" in str(info.value) and "--data-folder" in str(info.value)
    assert list(cache.iterdir()) == []  # nothing half-written left behind
