"""A minimal writer of TensorFlow's V2 checkpoint format (tests only: TensorFlow is not installed in CI).

It writes what TF's BundleWriter writes for float tensors: an SSTable `PREFIX.index` (the header under
the empty key, then one `BundleEntryProto` per tensor name in sorted order, with masked crc32c values)
and the raw little-endian bytes in `PREFIX.data-00000-of-00001`.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from haaqicli.models.tf_checkpoint import DTYPE_CODES, TABLE_MAGIC, crc32c, mask_crc


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes, wire: int | None = None) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if wire == 5:
        return _varint(number << 3 | 5) + struct.pack("<I", value)
    return _varint(number << 3) + _varint(value)


def _block(entries: list[tuple[bytes, bytes]]) -> bytes:
    """A block without key sharing (one restart point at 0)."""
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    return body + struct.pack("<II", 0, 1)


def _with_trailer(block: bytes) -> bytes:
    return block + b"\x00" + struct.pack("<I", mask_crc(crc32c(block + b"\x00")))


def write_tf_checkpoint(prefix: str | Path, tensors: dict[str, np.ndarray]) -> None:
    prefix = str(prefix)
    data, entries = bytearray(), [(b"", _field(1, 1))]  # BundleHeaderProto: one shard, little-endian
    for name in sorted(tensors):
        array = np.asarray(tensors[name], dtype=np.float32, order="C")  # 0-d stays 0-d
        raw = array.astype("<f4").tobytes()
        shape = b"".join(_field(2, _field(1, int(d))) for d in array.shape)
        entry = (_field(1, DTYPE_CODES[np.dtype("<f4")]) + _field(2, shape) + _field(4, len(data))
                 + _field(5, len(raw)) + _field(6, mask_crc(crc32c(raw)), wire=5))
        entries.append((name.encode(), entry))
        data += raw
    table = bytearray()
    data_block = _block(entries)
    data_handle = _varint(0) + _varint(len(data_block))
    table += _with_trailer(data_block)
    meta_block = _block([])
    meta_handle = _varint(len(table)) + _varint(len(meta_block))
    table += _with_trailer(meta_block)
    index_block = _block([(entries[-1][0], data_handle)])
    index_handle = _varint(len(table)) + _varint(len(index_block))
    table += _with_trailer(index_block)
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    Path(prefix + ".index").write_bytes(bytes(table + footer))
    Path(prefix + ".data-00000-of-00001").write_bytes(bytes(data))
