"""IDX parsing on synthetic files, corrupt files, and the real Fashion-MNIST test split."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from lowbit.errors import LowbitError
from lowbit.zoo.errors import CorruptDataError, MissingResourceError
from lowbit.zoo.fashion_mnist import CLASSES, FASHION_MNIST_DIR, load_fashion_mnist
from lowbit.zoo.idx import parse_idx, read_idx


def idx_bytes(array: np.ndarray, type_code: int) -> bytes:
    """A reference IDX encoder written from the format description."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize(
    ("dtype", "code"),
    [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B), (np.int32, 0x0C),
     (np.float32, 0x0D), (np.float64, 0x0E)],
)
def test_parse_every_element_type(dtype, code):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    out = parse_idx(idx_bytes(array, code))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def test_read_gz_and_raw(tmp_path):
    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    raw = tmp_path / "x-idx3-ubyte"
    raw.write_bytes(idx_bytes(images, 0x08))
    gz = tmp_path / "x-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(idx_bytes(images, 0x08)))
    np.testing.assert_array_equal(read_idx(raw), images)
    np.testing.assert_array_equal(read_idx(gz), images)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not an IDX file"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "not an IDX file"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX element type"),
        (b"\x00\x00\x08\x00", "zero dimensions"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x01", "truncated IDX header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x05\x06", "truncated or corrupt"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x05\x06", "truncated or corrupt"),
    ],
)
def test_corrupt_content_raises(data, message):
    with pytest.raises(CorruptDataError, match=message):
        parse_idx(data)


def test_corrupt_gzip_and_missing_file(tmp_path):
    good = gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8), 0x08))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptDataError, match=r"cut\.gz cannot be decompressed"):
        read_idx(cut)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(LowbitError, match=r"garbage\.gz"):
        read_idx(garbage)
    with pytest.raises(MissingResourceError, match="does not exist"):
        read_idx(tmp_path / "nope.gz")


def write_split(folder, prefix, images, labels):
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(images, 0x08)))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(labels, 0x08)))


def test_load_fashion_mnist_from_synthetic_files(tmp_path):
    images = np.full((5, 28, 28), 255, np.uint8)
    images[0, 0, 0] = 0
    write_split(tmp_path, "t10k", images, np.array([0, 1, 2, 3, 9], np.uint8))
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    assert x[0, 0, 0, 0] == 0.0 and x.max() == 1.0
    assert y.dtype == torch.int64 and y.tolist() == [0, 1, 2, 3, 9]


def test_load_fashion_mnist_rejects_inconsistent_files(tmp_path):
    write_split(tmp_path, "train", np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(CorruptDataError, match="4 labels for 5 images"):
        load_fashion_mnist("train", root=tmp_path)
    write_split(tmp_path, "train", np.zeros((2, 28, 28), np.uint8), np.array([3, 10], np.uint8))
    with pytest.raises(CorruptDataError, match=r"outside 0\.\.9"):
        load_fashion_mnist("train", root=tmp_path)
    write_split(tmp_path, "train", np.zeros((2, 27, 28), np.uint8), np.array([3, 1], np.uint8))
    with pytest.raises(CorruptDataError, match=r"expected uint8 \[N, 28, 28\]"):
        load_fashion_mnist("train", root=tmp_path)


def test_missing_fashion_mnist_says_what_to_install(tmp_path):
    with pytest.raises(MissingResourceError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(LowbitError, match="split must be one of"):
        load_fashion_mnist("validation", root=tmp_path)


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_split():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.min() >= 0.0 and x.max() <= 1.0
    # the official test split is balanced: 1000 images of each class
    assert torch.bincount(y, minlength=len(CLASSES)).tolist() == [1000] * 10
    assert y[:3].tolist() == [9, 2, 1]
