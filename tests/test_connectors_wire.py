"""Wire format v1 and sample checks, as pure functions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from connectors.counters import Reject
from connectors.samples import WIRE_DTYPES, SampleShape, as_features, drop_nonfinite, json_samples
from connectors.wire import encode, encode_json, header_from, parse_header


@pytest.mark.parametrize("dtype", sorted(WIRE_DTYPES))
def test_encode_parse_round_trip_every_dtype(dtype: str) -> None:
    x = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    frames = encode(x, np.array([3, 4], dtype=np.int32))
    header = parse_header(frames[0])
    assert header.dtype == np.dtype(dtype).newbyteorder("<")
    assert header.shape == (2, 3, 4) and header.sample_shape == (3, 4)
    assert bytes(frames[1]) == x.astype(header.dtype).tobytes()
    assert np.frombuffer(bytes(frames[2]), header.labels_dtype).tolist() == [3, 4]


def test_big_endian_input_goes_out_little_endian() -> None:
    x = np.array([[1.5, -2.0]], dtype=">f8")
    frames = encode(x)
    assert json.loads(frames[0])["dtype"] == "float64"
    assert np.frombuffer(bytes(frames[1]), "<f8").tolist() == [1.5, -2.0]


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(TypeError):
        encode(np.array([[1 + 2j]]))
    with pytest.raises(TypeError):
        encode(np.array([["a"]]))
    with pytest.raises(ValueError):
        encode(np.zeros((2, 2), np.float32), np.zeros(3))
    with pytest.raises(ValueError):
        encode(np.zeros((2, 2), np.float32), shape=[1])  # reserved header field
    assert json.loads(encode(np.zeros((1, 1), np.float32), kind="scores")[0])["kind"] == "scores"


def test_encode_json_is_plain_json() -> None:
    assert json.loads(encode_json(np.ones((2, 2)), [0, 1])) == {"x": [[1.0, 1.0], [1.0, 1.0]], "y": [0, 1]}


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "json"),
        (b"{not json", "json"),
        (b"[1, 2]", "header"),
        (b'{"dtype": "float32", "shape": [1]}', "header"),
        (b'{"v": 2, "dtype": "float32", "shape": [1]}', "version"),
        (b'{"v": true, "dtype": "float32", "shape": [1]}', "version"),
        (b'{"v": 1, "dtype": "complex64", "shape": [1]}', "dtype"),
        (b'{"v": 1, "dtype": "float32", "shape": [1], "labels_dtype": "str"}', "dtype"),
        (b'{"v": 1, "dtype": "float32", "shape": []}', "shape"),
        (b'{"v": 1, "dtype": "float32", "shape": [2, -1]}', "shape"),
        (b'{"v": 1, "dtype": "float32", "shape": [2, 1.5]}', "shape"),
        (b'{"v": 1, "dtype": "float32", "shape": [2, true]}', "shape"),
        (b'{"v": 1, "dtype": "float32", "shape": "2,3"}', "shape"),
        (b'{"v": 1, "dtype": "float32", "shape": [1,1,1,1,1,1,1,1,1,1]}', "shape"),
    ],
)
def test_bad_headers_are_rejected_by_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(Reject) as info:
        parse_header(raw)
    assert info.value.reason == reason


def test_header_ignores_unknown_keys_and_defaults_labels_to_int64() -> None:
    h = header_from({"v": 1, "dtype": "uint8", "shape": [5, 28, 28], "comment": "hi"})
    assert h.labels_dtype == np.dtype("<i8") and h.nbytes == 5 * 28 * 28 and h.labels_nbytes == 40


# -- samples ------------------------------------------------------------------------------------------
def test_drop_nonfinite_keeps_finite_rows_and_is_free_when_all_finite() -> None:
    x = np.ones((4, 3), dtype=np.float32)
    same, _, dropped = drop_nonfinite(x)
    assert same is x and dropped == 0
    x[1, 2] = np.nan
    x[3, 0] = -np.inf
    y = np.array([0.0, 1.0, np.nan, 3.0], dtype=np.float32)
    kept, ky, dropped = drop_nonfinite(x, y)
    assert dropped == 3 and len(kept) == 1 and ky.tolist() == [0.0]


def test_drop_nonfinite_does_not_mistake_large_finite_values() -> None:
    x = np.full((2, 3), 3e38, dtype=np.float32)  # the sum of squares overflows; the values are finite
    kept, _, dropped = drop_nonfinite(x)
    assert dropped == 0 and kept is x


def test_as_features_only_copies_when_needed() -> None:
    x = np.zeros((2, 2), np.float32)
    assert as_features(x) is x
    t = as_features(np.zeros((2, 4), np.float64)[:, ::2])
    assert t.dtype == np.float32 and t.flags.c_contiguous


@pytest.mark.parametrize(
    ("obj", "shape", "expected_x", "expected_y"),
    [
        ({"x": [1, 2, 3]}, None, [[1, 2, 3]], None),
        ({"x": [1, 2], "y": 7}, None, [[1, 2]], [7]),
        ({"x": [[1, 2], [3, 4]], "y": [0, 1]}, None, [[1, 2], [3, 4]], [0, 1]),
        ([5, 6], None, [[5, 6]], None),
        ({"x": [[1, 2], [3, 4]]}, (2, 2), [[[1, 2], [3, 4]]], None),  # one 2x2 sample
        ({"x": [[[1, 2], [3, 4]]]}, (2, 2), [[[1, 2], [3, 4]]], None),
        ({"x": [1, 2], "y": 0.5}, None, [[1, 2]], [0.5]),
    ],
)
def test_json_samples(obj, shape, expected_x, expected_y) -> None:
    x, y = json_samples(obj, SampleShape(shape))
    assert x.dtype == np.float32 and x.tolist() == expected_x
    assert (None if y is None else y.tolist()) == expected_y


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"y": 1}, "schema"),
        ("text", "schema"),
        ({"x": "1,2"}, "schema"),
        ({"x": [1, "a"]}, "schema"),
        ({"x": [[1, 2], [3]]}, "schema"),
        ({"x": [1, 2], "y": [1, 2]}, "schema"),
        ({"x": [[1, 2]], "y": [1, 2]}, "schema"),
        ({"x": [1, 2], "y": "cat"}, "label"),
        ({"x": [1, 2, 3]}, "shape"),
        ({"x": [[[1, 2]]]}, "shape"),
    ],
)
def test_json_samples_rejects(obj, reason: str) -> None:
    shape = SampleShape((2,))
    with pytest.raises(Reject) as info:
        json_samples(obj, shape)
    assert info.value.reason == reason


# -- what a hostile producer may declare ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ("0, 1" + "0" * 30, "too_large"),  # an empty payload agrees with it; numpy could not make the shape
        ("1" + "0" * 30 + ", 1", "too_large"),
        (f"{2**40}, {2**40}", "too_large"),
        (f"1, {2**62}, {2**62}", "too_large"),
        ("1, 0", "shape"),  # samples without a value
        ("0, 0", "shape"),
        ("4, 3, 0", "shape"),
        ("1, " + "9" * 5000, "json"),  # more digits than Python turns into an integer
    ],
)
def test_declared_sizes_are_bounded_before_anything_is_allocated(shape: str, reason: str) -> None:
    with pytest.raises(Reject) as info:
        parse_header(b'{"v": 1, "dtype": "float32", "shape": [' + shape.encode() + b"]}")
    assert info.value.reason == reason
    assert len(str(info.value)) < 300  # what a producer declared is never printed whole


def test_header_size_limit_is_the_readers() -> None:
    assert parse_header(b'{"v": 1, "dtype": "float32", "shape": [10, 10]}', max_bytes=400).nbytes == 400
    with pytest.raises(Reject, match="over 399 bytes") as info:
        parse_header(b'{"v": 1, "dtype": "float32", "shape": [10, 10]}', max_bytes=399)
    assert info.value.reason == "too_large"
    # an empty batch still may not declare a sample the reader would refuse
    with pytest.raises(Reject, match="over 399 bytes each"):
        parse_header(b'{"v": 1, "dtype": "float32", "shape": [0, 100]}', max_bytes=399)
    assert parse_header(b'{"v": 1, "dtype": "float32", "shape": [0, 99]}', max_bytes=399).count == 0


def test_a_shape_is_fixed_only_by_samples_taken_and_never_by_unlearnable_ones() -> None:
    shape = SampleShape()
    for unlearnable in [(), (0,), (3, 0)]:
        with pytest.raises(Reject) as info:
            shape.admit(unlearnable, count=7)
        assert (info.value.reason, info.value.count) == ("shape", 7)
    shape.admit((4,))
    assert shape.shape is None  # admitted, not taken
    # a JSON value rejected for its labels leaves the shape open, its samples counted
    with pytest.raises(Reject) as info:
        json_samples({"x": [[1, 2, 3], [4, 5, 6]], "y": ["a", "b"]}, shape)
    assert (info.value.reason, info.value.count, shape.shape) == ("label", 2, None)
    x, _ = json_samples({"x": [1, 2]}, shape, fix=False)
    assert x.shape == (1, 2) and shape.shape is None
    json_samples({"x": [1, 2]}, shape)
    assert shape.shape == (2,)
    with pytest.raises(Reject, match=r"\(3,\) differs from the stream's \(2,\), fixed by its first samples") as info:
        json_samples({"x": [[1, 2, 3]] * 5}, shape)
    assert info.value.count == 5
    # a configured shape decides, even one a stream could not fix by itself
    scalars = SampleShape([])
    scalars.admit(())
    with pytest.raises(Reject, match="configured"):
        scalars.admit((1,))


@pytest.mark.parametrize("obj", [{"x": []}, {"x": [[]]}, {"x": [[], []]}, []])
def test_json_samples_without_a_value_are_rejected(obj) -> None:
    shape = SampleShape()
    with pytest.raises(Reject) as info:
        json_samples(obj, shape)
    assert info.value.reason == "shape" and shape.shape is None
