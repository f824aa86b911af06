"""TFRecord framing (length, masked CRC32C, data, masked CRC32C) without TensorFlow.

Request logs are written from a background thread of a server that may run the TFLite
backend, and warmup files are read before TensorFlow is needed; both want the plain
format, which ``tf.data.TFRecordDataset`` reads back unchanged.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

_MASK_DELTA = 0xA282EAD8


def masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record as it sits in a TFRecord file (16 bytes of framing + the record)."""
    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked_crc(length)) + record + \
        struct.pack("<I", masked_crc(record))


def read_records(f: BinaryIO) -> Iterator[bytes]:
    """Records of an uncompressed TFRecord file; ValueError on a corrupt or cut record."""
    while True:
        header = f.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError("truncated TFRecord header")
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != masked_crc(header[:8]):
            raise ValueError("corrupt TFRecord length")
        data = f.read(length)
        footer = f.read(4)
        if len(data) < length or len(footer) < 4:
            raise ValueError("truncated TFRecord")
        if struct.unpack("<I", footer)[0] != masked_crc(data):
            raise ValueError("corrupt TFRecord data")
        yield data
