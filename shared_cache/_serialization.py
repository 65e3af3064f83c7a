"""Wire format of cached values (section 6 of the standard), with no pickle anywhere.

A payload is one kind byte followed by its body:

- ``j`` + JSON (orjson): any JSON value; numpy, torch and TensorFlow values become plain lists.
- ``e`` + embedding: little-endian uint32 dimension, then that many float32 values. 1,536 dims take
  6,149 bytes instead of about 30 KB of JSON, and decode without parsing text.
- ``c`` + JSON: the output of a caller's custom serializer; its deserializer gets it back.
- ``n``: a cached "not found" (negative caching).

**A hit returns what the miss returned, or nothing is cached.** A JSON value is cached only if JSON
gives back a value equal to it, and the miss then returns JSON's reading of it too (tuples and numpy
arrays come back as lists, int and str enums as their values, dict subclasses as dicts). Anything JSON
would change is refused with ``SerializationError``: ``nan`` and infinities (JSON has none),
``datetime``, ``date``, ``time``, ``UUID``, ``Decimal``, other enums, dataclasses, sets, bytes, dict
keys that are not strings; pass ``serializer=``/``deserializer=`` for those. Embeddings go through
float32: the value a miss returns is the float32 one a hit will return.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Callable
from functools import lru_cache
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
# datetime, dataclasses and subclasses of str and int would come back as plain strings, dicts and
# ints: they reach ``_default``, which refuses them rather than change a value silently; subclasses
# of dict and list (OrderedDict, defaultdict) and named tuples are plain containers, and JSON gives
# back containers equal to them. (orjson writes enums itself, as their values.)
_ORJSON_OPTIONS = (
    orjson.OPT_SERIALIZE_NUMPY
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_HINT = "pass serializer=/deserializer= for custom types"

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


def _is_numpy_array(value: Any) -> bool:
    return type(value).__module__.startswith("numpy") and hasattr(value, "ndim")


def encode_embedding(vector: Any) -> bytes:
    """Encode one embedding (list of numbers, 1-D array or tensor) as ``e`` + dim + float32s."""
    if _is_numpy_array(vector) and vector.ndim == 1:
        if vector.dtype.kind not in "fiub":
            raise SerializationError(f"embedding must hold numbers, got a numpy array of dtype {vector.dtype}")
        body: bytes = vector.astype("<f4", copy=False).tobytes()
        return b"e" + _DIM.pack(len(vector)) + body
    plain = to_plain(vector)
    if not isinstance(plain, (list, tuple)):
        raise SerializationError(f"embedding must be a flat sequence of numbers, got {type(vector).__name__}")
    try:
        # struct converts each float straight to C (2.5x fewer instructions than array's per-item
        # argument parsing, which matters for a batch of new embeddings given as lists)
        return b"e" + _DIM.pack(len(plain)) + _float32s(len(plain)).pack(*plain)
    except (struct.error, TypeError, OverflowError):
        pass  # not numbers, or beyond float32's range: array says which, or stores inf as before
    try:
        floats = array("f", plain)  # refuses anything but real numbers (nested lists, strings...)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"embedding must be a flat sequence of numbers: {exc}") from exc
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        floats.byteswap()
    return b"e" + _DIM.pack(len(floats)) + floats.tobytes()


@lru_cache(maxsize=16)
def _float32s(dim: int) -> struct.Struct:
    """The little-endian float32 packer of ``dim`` values (a service uses one or two dimensions)."""
    return struct.Struct(f"<{dim}f")


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


def _default(value: Any) -> Any:
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TypeError(f"Type is not JSON serializable without change: {type(value).__name__}")


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=_ORJSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise SerializationError(f"cannot cache a value of type {type(value).__name__}: {exc}; {_HINT}") from exc


def _same(original: Any, back: Any) -> bool:
    """``back`` (decoded JSON) equals ``original``, reading tuples and numpy arrays as lists."""
    if isinstance(original, (list, tuple)):
        return (
            isinstance(back, list)
            and len(back) == len(original)
            and all(_same(a, b) for a, b in zip(original, back, strict=True))
        )
    if isinstance(original, dict):
        return (
            isinstance(back, dict)
            and len(back) == len(original)
            and all(k in back and _same(v, back[k]) for k, v in original.items())
        )
    if type(original).__module__.startswith("numpy"):
        return _same(original.tolist(), back)
    if isinstance(original, float) or isinstance(back, float):
        return type(back) in (int, float) and original == back  # nan and inf have no JSON form: unequal
    if isinstance(original, bool):
        return back is original
    if isinstance(original, (int, str)):  # int and str enums come back as their values
        return type(back) is (int if isinstance(original, int) else str) and original == back
    try:
        return type(original) is type(back) and bool(original == back)
    except Exception:
        return False


def encode_json(value: Any) -> tuple[bytes, Any]:
    """``j`` + JSON of ``value``, and the value a hit will return (JSON's reading of it).

    Raises ``SerializationError`` when JSON would return something else (see the module docstring).
    """
    body = _dumps(value)
    back = orjson.loads(body)
    try:
        equal = type(back) is type(value) and bool(back == value)
    except Exception:  # numpy arrays compare element-wise
        equal = False
    if not equal and not _same(value, back):
        raise SerializationError(
            f"cannot cache a value of type {type(value).__name__}: JSON would not give it back unchanged "
            f"(nan or infinity, UUID, enum, or another value JSON turns into something else); {_HINT}"
        )
    return b"j" + body, back


def encode_value(value: Any, data_type: str = "", serializer: Serializer | None = None) -> tuple[bytes, Any]:
    """The payload of ``value`` and the value a hit on that payload will return (so a miss can return
    the same). ``None`` encodes as a cached "not found"."""
    if serializer is not None:
        try:
            custom = serializer(value)
        except Exception as exc:
            raise SerializationError(f"custom serializer failed for {type(value).__name__}: {exc}") from exc
        body, _ = encode_json(to_plain(custom))
        return b"c" + body[1:], value
    if value is None:
        return NONE_PAYLOAD, None
    if data_type == "embedding":
        try:
            payload = encode_embedding(value)
        except SerializationError:
            if _is_numpy_array(value) and value.ndim == 1:
                raise  # a 1-D array of something else than numbers: not an embedding, not JSON either
        else:
            return payload, decode_embedding(payload)
    return encode_json(value)


def serialize_for_cache(value: Any, data_type: str = "", serializer: Serializer | None = None) -> bytes:
    """Encode ``value`` for the cache. ``None`` encodes as a cached "not found". Raises
    ``SerializationError`` for a value the cache cannot give back unchanged."""
    return encode_value(value, data_type, serializer)[0]


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
