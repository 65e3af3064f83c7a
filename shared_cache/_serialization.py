"""Wire format of cached values (section 6 of the standard), with no pickle anywhere.

A payload is one kind byte followed by its body:

- ``j`` + JSON (orjson): any JSON value; numpy, torch and TensorFlow values become plain lists.
- ``e`` + embedding: little-endian uint32 dimension, then that many float32 values. 1,536 dims take
  6,149 bytes instead of about 30 KB of JSON, and decode without parsing text.
- ``c`` + JSON: the output of a caller's custom serializer; its deserializer gets it back.
- ``n``: a cached "not found" (negative caching).

Embeddings go through float32, so floats come back rounded to float32 precision.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable
from typing import Any

import orjson

from .errors import CorruptEntryError, SerializationError

KIND_JSON = 0x6A  # b"j"
KIND_EMBEDDING = 0x65  # b"e"
KIND_CUSTOM = 0x63  # b"c"
KIND_NONE = 0x6E  # b"n"
NONE_PAYLOAD = b"n"

_DIM = struct.Struct("<I")
_LITTLE = sys.byteorder == "little"
_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY

Serializer = Callable[[Any], Any]
Deserializer = Callable[[Any], Any]


def to_plain(value: Any) -> Any:
    """Numpy arrays and scalars, torch and TensorFlow tensors -> plain Python values (section 6.2)."""
    module = type(value).__module__
    if module.startswith("torch") and hasattr(value, "detach"):
        return value.detach().cpu().numpy().tolist()
    if module.startswith("tensorflow") and hasattr(value, "numpy"):
        return value.numpy().tolist()
    if module.startswith("numpy") and hasattr(value, "tolist"):
        return value.tolist()
    return value


def encode_embedding(vector: Any) -> bytes:
    """Encode one embedding (list of numbers, 1-D array or tensor) as ``e`` + dim + float32s."""
    module = type(vector).__module__
    if module.startswith("numpy") and getattr(vector, "ndim", None) == 1:
        body: bytes = vector.astype("<f4", copy=False).tobytes()
        return b"e" + _DIM.pack(len(vector)) + body
    plain = to_plain(vector)
    if not isinstance(plain, (list, tuple)):
        raise SerializationError(f"embedding must be a flat sequence of numbers, got {type(vector).__name__}")
    try:
        floats = array("f", plain)  # refuses anything but real numbers (nested lists, strings...)
    except (TypeError, OverflowError) as exc:
        raise SerializationError(f"embedding must be a flat sequence of numbers: {exc}") from exc
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        floats.byteswap()
    return b"e" + _DIM.pack(len(floats)) + floats.tobytes()


def decode_embedding(payload: bytes) -> list[float]:
    if len(payload) < 5 or payload[0] != KIND_EMBEDDING:
        raise CorruptEntryError("embedding payload has no header")
    (dim,) = _DIM.unpack_from(payload, 1)
    if len(payload) != 5 + 4 * dim:
        raise CorruptEntryError(f"embedding payload of {len(payload)} bytes does not hold {dim} floats")
    floats = array("f")
    floats.frombytes(payload[5:])
    if not _LITTLE:  # pragma: no cover
        floats.byteswap()
    return floats.tolist()


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise SerializationError(
            f"cannot cache a value of type {type(value).__name__}: {exc}; "
            "pass serializer=/deserializer= for custom types"
        ) from exc


def serialize_for_cache(value: Any, data_type: str = "", serializer: Serializer | None = None) -> bytes:
    """Encode ``value`` for the cache. ``None`` encodes as a cached "not found"."""
    if serializer is not None:
        try:
            custom = serializer(value)
        except Exception as exc:
            raise SerializationError(f"custom serializer failed for {type(value).__name__}: {exc}") from exc
        return b"c" + _dumps(to_plain(custom))
    if value is None:
        return NONE_PAYLOAD
    if data_type == "embedding":
        try:
            return encode_embedding(value)
        except SerializationError:
            pass  # not a single vector (e.g. a batch or a dict): plain JSON below
    return b"j" + _dumps(to_plain(value))


def deserialize_from_cache(payload: bytes, data_type: str = "", deserializer: Deserializer | None = None) -> Any:
    """Decode bytes written by :func:`serialize_for_cache`; a fresh object on every call."""
    if not payload:
        raise CorruptEntryError("empty cache payload")
    kind = payload[0]
    try:
        if kind == KIND_JSON:
            return orjson.loads(payload[1:])
        if kind == KIND_EMBEDDING:
            return decode_embedding(payload)
        if kind == KIND_CUSTOM:
            plain = orjson.loads(payload[1:])
            return deserializer(plain) if deserializer is not None else plain
        if kind == KIND_NONE and len(payload) == 1:
            return None
    except orjson.JSONDecodeError as exc:
        raise CorruptEntryError(f"cache payload is not valid JSON: {exc}") from exc
    raise CorruptEntryError(f"unknown cache payload kind {payload[:1]!r}")
