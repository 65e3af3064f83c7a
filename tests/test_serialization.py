"""Wire format: JSON for values, float32 for embeddings, never pickle."""

from __future__ import annotations

import json
import math
from array import array

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared_cache import CorruptEntryError, SerializationError, deserialize_from_cache, serialize_for_cache

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_json_values_round_trip(value: object) -> None:
    assert deserialize_from_cache(serialize_for_cache(value, "document"), "document") == value


@given(st.lists(st.floats(width=32, allow_nan=False), max_size=64))
def test_embeddings_round_trip_at_float32(vector: list[float]) -> None:
    payload = serialize_for_cache(vector, "embedding")
    assert payload[:1] == b"e"
    assert deserialize_from_cache(payload, "embedding") == vector


numbers = st.floats() | st.integers(-(2**200), 2**200) | st.booleans()


@given(st.lists(numbers, max_size=40) | st.tuples(numbers, numbers))
def test_embedding_bytes_are_float32_casts_of_any_numbers(vector: list[float]) -> None:
    """Whatever the numbers (nan, infinities, beyond float32's range, huge ints, bools), the payload
    holds the C float32 cast of each, as ``array("f")`` stores it: the fast path must not differ."""
    payload = serialize_for_cache(vector, "embedding")
    assert payload == b"e" + len(vector).to_bytes(4, "little") + array("f", vector).tobytes()


def test_embedding_is_compact_and_fast_to_decode() -> None:
    vector = [math.sin(i) for i in range(1536)]
    payload = serialize_for_cache(vector, "embedding")
    assert len(payload) <= 6200
    assert len(json.dumps(vector)) > 25_000
    assert deserialize_from_cache(payload, "embedding") == array("f", vector).tolist()


def test_numpy_and_scalars_become_plain_python() -> None:
    arr = np.arange(4, dtype=np.float64) / 3
    assert deserialize_from_cache(serialize_for_cache(arr, "embedding"), "embedding") == pytest.approx(
        arr.tolist(), rel=1e-6
    )
    assert deserialize_from_cache(serialize_for_cache({"v": arr}, "document"), "document") == {"v": arr.tolist()}
    assert deserialize_from_cache(serialize_for_cache(np.float32(1.5), "x"), "x") == 1.5
    # a batch (2-D) under "embedding" stays JSON, as lists of lists
    batch = np.ones((2, 3), dtype=np.float32)
    assert deserialize_from_cache(serialize_for_cache(batch, "embedding"), "embedding") == [[1.0] * 3] * 2


def test_unserializable_values_raise_a_clear_error() -> None:
    class Custom:
        pass

    with pytest.raises(SerializationError, match="cannot cache a value of type Custom"):
        serialize_for_cache(Custom(), "document")
    with pytest.raises(SerializationError):
        serialize_for_cache({1: "int keys are not JSON"}, "document")


def test_custom_serializer_hooks() -> None:
    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    payload = serialize_for_cache(Point(3), "complex_data", serializer=lambda p: {"x": p.x})
    assert payload[:1] == b"c"
    back = deserialize_from_cache(payload, "complex_data", deserializer=lambda d: Point(d["x"]))
    assert isinstance(back, Point) and back.x == 3


@pytest.mark.parametrize("bad", [b"", b"?x", b"j{not json", b"e\x05\x00\x00\x00abc", b"nn"])
def test_corrupt_payloads_raise(bad: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        deserialize_from_cache(bad, "document")


def test_no_pickle_anywhere() -> None:
    import pathlib
    import re

    import shared_cache

    for path in pathlib.Path(shared_cache.__file__).parent.rglob("*.py"):
        assert not re.search(r"import (c?pickle|marshal|shelve)|pickle\.", path.read_text()), path


loose_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # nan and infinities included
    | st.text()
    | st.binary(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.one_of(st.text(), st.integers()), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(loose_values)
def test_what_a_miss_returns_is_what_a_hit_returns_or_nothing_is_cached(value: object) -> None:
    from shared_cache._serialization import encode_value

    try:
        payload, returned = encode_value(value, "document")
    except SerializationError:
        return  # refused: returned to the caller as it is, never cached
    assert deserialize_from_cache(payload, "document") == returned
    assert serialize_for_cache(returned, "document") == payload
