"""Reading IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number — two zero bytes, one byte for the
element type, one byte for the number of dimensions — then one big-endian
uint32 per dimension, then the elements in C order, big-endian. The files are
usually gzip-compressed (``*.gz``). Anything that does not follow this layout
raises `CorruptDataError` with the file name, never a numpy error.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from lowbit.zoo.errors import CorruptDataError, MissingResourceError

# IDX element-type byte → big-endian numpy dtype (the one table of the format)
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file.

    Args:
        data: the whole file content.
        name: shown in error messages.

    Returns:
        An array with the file's shape, in native byte order.

    Raises:
        CorruptDataError: bad magic number, unknown type, or wrong length.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
        [7, 9]
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CorruptDataError(
            f"{name} is not an IDX file: it must start with two zero bytes, got "
            f"{data[:4].hex() or 'an empty file'}"
        )
    type_code, ndim = data[2], data[3]
    if type_code not in IDX_DTYPES:
        raise CorruptDataError(
            f"{name}: unknown IDX element type 0x{type_code:02x}; known types are "
            + ", ".join(f"0x{k:02x}" for k in IDX_DTYPES)
        )
    if ndim == 0:
        raise CorruptDataError(f"{name}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise CorruptDataError(f"{name}: truncated IDX header ({len(data)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise CorruptDataError(
            f"{name}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(data) - header} bytes after the header; the file is truncated or "
            "corrupt, reinstall it"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzip-compressed if its name ends in ``.gz``.

    Args:
        path: the file.

    Returns:
        The decoded array (see `parse_idx`).

    Raises:
        MissingResourceError: the file does not exist.
        CorruptDataError: the gzip stream or the IDX content is broken.

    Example:
        >>> read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz").shape
        (10000,)
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"IDX file {path} does not exist")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDataError(
            f"{path} cannot be decompressed ({type(exc).__name__}: {exc}); the file is "
            "truncated or corrupt, reinstall it"
        ) from exc
    return parse_idx(data, str(path))
