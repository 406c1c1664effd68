"""A reader of TensorFlow's checkpoint format (the V2 "tensor bundle"), without TensorFlow.

Pretrained models that ship only as TF checkpoints (musicnn) are converted once to safetensors; this
reader lets that conversion run in the tool's own environment. A bundle `PREFIX` is two files:

- `PREFIX.index`: an SSTable (LevelDB's table format) mapping each tensor name to a
  `BundleEntryProto` (dtype, shape, shard, offset, size, masked crc32c); the empty key holds the
  `BundleHeaderProto` (shard count, endianness).
- `PREFIX.data-00000-of-00001`: the tensors' raw bytes, little-endian, row-major.

Only what such checkpoints use is supported: one shard, uncompressed blocks, whole (unsliced)
tensors of float, double, int32 and int64. Each tensor's crc32c is checked.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from haaqicli.util.errors import ModelError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
BLOCK_TRAILER = 5  # compression type (1 byte) + crc32c (4 bytes)
# tensorflow/core/framework/types.proto
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 9: np.dtype("<i8")}
DTYPE_CODES = {v: k for k, v in DTYPES.items()}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = struct.unpack_from("<I", buf, pos)[0], pos + 4
        elif wire == 1:
            value, pos = struct.unpack_from("<Q", buf, pos)[0], pos + 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one SSTable block (prefix-compressed keys, restart array at the end)."""
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 - 4 * restarts
    entries, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        length, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        entries.append((key, block[pos:pos + length]))
        pos += length
    return entries


def _read_block(table: bytes, handle: bytes, origin: str) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + BLOCK_TRAILER > len(table):
        raise ModelError(f"{origin}: truncated table block")
    if table[offset + size] != 0:
        raise ModelError(f"{origin}: compressed table blocks are not supported")
    return table[offset:offset + size]


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TensorFlow checks tensor bytes (pure Python: a few MB a second)."""
    crc, table = 0xFFFFFFFF, _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """TensorFlow stores crc32c values masked (rotated and offset), as LevelDB does."""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _paths(prefix: str | Path) -> tuple[Path, Path]:
    """A checkpoint prefix, or a folder whose files are `.index` / `.data-...` (an empty prefix)."""
    text = str(prefix)
    if Path(text).is_dir():
        text = text.rstrip("/") + "/"
    return Path(text + ".index"), Path(text + ".data-00000-of-00001")


def read_index(prefix: str | Path) -> dict[str, dict]:
    """Tensor name -> {"dtype", "shape", "offset", "size", "crc32c"} from the bundle's index."""
    index_path, _ = _paths(prefix)
    if not index_path.is_file():
        raise ModelError(f"{index_path}: no TensorFlow checkpoint index")
    table = index_path.read_bytes()
    origin = str(index_path)
    if len(table) < FOOTER_SIZE or struct.unpack_from("<Q", table, len(table) - 8)[0] != TABLE_MAGIC:
        raise ModelError(f"{origin}: not a TensorFlow checkpoint index (bad table magic)")
    footer = table[-FOOTER_SIZE:]
    _, pos = _varint(footer, 0)  # metaindex handle: offset, size (unused)
    _, pos = _varint(footer, pos)
    index_block = _read_block(table, footer[pos:], origin)
    entries: dict[str, dict] = {}
    for _, handle in _block_entries(index_block):
        for key, value in _block_entries(_read_block(table, handle, origin)):
            fields = _fields(value)
            if key == b"":  # BundleHeaderProto: num_shards = 1, endianness = 2 (0: little)
                header = dict(fields)
                if header.get(1, 1) != 1 or header.get(2, 0) != 0:
                    raise ModelError(f"{origin}: only single-shard little-endian checkpoints are supported")
                continue
            entry = {"dtype": 1, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": None}
            for number, field in fields:
                if number == 1:
                    entry["dtype"] = field
                elif number == 2:
                    entry["shape"] = tuple(dict(_fields(dim)).get(1, 0) for n, dim in _fields(field) if n == 2)
                elif number == 3:
                    entry["shard"] = field
                elif number == 4:
                    entry["offset"] = field
                elif number == 5:
                    entry["size"] = field
                elif number == 6:
                    entry["crc32c"] = field
                elif number == 7:
                    raise ModelError(f"{origin}: {key.decode()}: sliced tensors are not supported")
            entries[key.decode()] = entry
    return entries


def read_tf_checkpoint(prefix: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The tensors of a TF checkpoint (all, or `names`) as numpy arrays, each crc32c-checked."""
    index = read_index(prefix)
    _, data_path = _paths(prefix)
    if not data_path.is_file():
        raise ModelError(f"{data_path}: checkpoint data file missing")
    wanted = sorted(index) if names is None else names
    missing = [n for n in wanted if n not in index]
    if missing:
        raise ModelError(f"{data_path}: no tensor {missing[0]!r} in the checkpoint")
    out = {}
    with data_path.open("rb") as f:
        for name in wanted:
            entry = index[name]
            if entry["dtype"] not in DTYPES:
                raise ModelError(f"{data_path}: {name}: unsupported dtype code {entry['dtype']}")
            f.seek(entry["offset"])
            raw = f.read(entry["size"])
            dtype = DTYPES[entry["dtype"]]
            if len(raw) != entry["size"] or entry["size"] != dtype.itemsize * int(np.prod(entry["shape"])):
                raise ModelError(f"{data_path}: {name}: {len(raw)} bytes do not hold shape {entry['shape']}")
            if entry["crc32c"] is not None and mask_crc(crc32c(raw)) != entry["crc32c"]:
                raise ModelError(f"{data_path}: {name}: crc32c mismatch (corrupt checkpoint)")
            out[name] = np.frombuffer(raw, dtype=dtype).reshape(entry["shape"]).copy()
    return out
