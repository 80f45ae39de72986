"""fastwds.tenbin: round trips, byte-for-byte parity with webdataset's tenbin, and malformed input."""

import io
import struct

import numpy as np
import pytest
import webdataset.tenbin as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from fastwds import tenbin

# dtypes both libraries handle (webdataset cannot do uint32: it spells it "unit32").
SHARED_DTYPES = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint64",
]
ALL_DTYPES = SHARED_DTYPES + ["uint32"]


def sample_arrays(dtypes=SHARED_DTYPES):
    rng = np.random.default_rng(0)
    arrays = []
    for i, name in enumerate(dtypes):
        shape = [(7,), (3, 5), (2, 3, 4), (1, 1, 1, 9)][i % 4]
        a = rng.integers(0, 100, size=shape).astype(name)
        arrays.append(a)
    return arrays


def assert_same_arrays(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_round_trip_every_dtype(dtype):
    a = (np.arange(24) % 100).astype(dtype).reshape(2, 3, 4)
    (b,) = tenbin.decode_buffer(tenbin.encode_buffer([a]))
    assert b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def test_buffers_are_byte_identical_to_webdataset():
    arrays = sample_arrays()
    infos = [f"info{i}" for i in range(len(arrays))]
    assert bytes(tenbin.encode_buffer(arrays)) == bytes(ref.encode_buffer(arrays))
    assert bytes(tenbin.encode_buffer(arrays, infos=infos)) == bytes(ref.encode_buffer(arrays, infos=infos))


def test_layout_magic_length_and_alignment():
    buf = bytes(tenbin.encode_buffer([np.arange(5, dtype="int16")], infos=["ab"]))
    assert buf[:8] == b"~TenBin~"
    header_len = struct.unpack("<q", buf[8:16])[0]
    assert header_len == 4 * 8  # dtype, info, rank, one dimension
    assert buf[16:24] == b"i2\0\0\0\0\0\0" and buf[24:32] == b"ab\0\0\0\0\0\0"
    data_start = 16 + 64  # the header payload is padded to 64 bytes
    assert buf[data_start : data_start + 8] == b"~TenBin~"
    assert struct.unpack("<q", buf[data_start + 8 : data_start + 16])[0] == 10
    assert len(buf) == 16 + 64 + 16 + 64


def test_fastwds_buffers_decode_in_webdataset_and_back():
    arrays = sample_arrays()
    assert_same_arrays(ref.decode_buffer(tenbin.encode_buffer(arrays)), arrays)
    assert_same_arrays(tenbin.decode_buffer(ref.encode_buffer(arrays)), arrays)
    assert_same_arrays(tenbin.decode_buffer(bytes(ref.encode_buffer(arrays))), arrays)


def test_infos_round_trip_and_check():
    arrays = [np.zeros(2, "f4"), np.ones(3, "i8")]
    buf = tenbin.encode_buffer(arrays, infos=["x", "longinfo"])
    data, infos = tenbin.decode_buffer(buf, infos=True)
    assert infos == ["x", "longinfo"]
    assert ref.decode_buffer(buf, infos=True)[1] == ["x", "longinfo"]
    assert_same_arrays(tenbin.decode_buffer(buf, infos=["x", "longinfo"]), arrays)
    with pytest.raises(ValueError, match="does not match"):
        tenbin.decode_buffer(buf, infos=["x", "other"])
    with pytest.raises(ValueError, match="longer than 8"):
        tenbin.encode_buffer(arrays, infos=["x", "muchtoolong"])
    with pytest.raises(ValueError, match="2 arrays but 1 infos"):
        tenbin.encode_buffer(arrays, infos=["x"])


def test_zero_d_empty_noncontiguous_and_big_endian_arrays():
    arrays = [
        np.array(3.5, dtype="float32"),
        np.zeros((0, 4), dtype="int16"),
        np.arange(24, dtype="int32").reshape(4, 6)[:, ::2],
        np.arange(5, dtype=">i4"),
        np.arange(6, dtype="uint32"),
    ]
    out = tenbin.decode_buffer(tenbin.encode_buffer(arrays))
    for got, expected in zip(out, arrays):
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert out[3].dtype == np.dtype("<i4")


def test_torch_tensors_are_stored_as_arrays():
    import torch

    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    (a,) = tenbin.decode_buffer(tenbin.encode_buffer([t]))
    np.testing.assert_array_equal(a, t.numpy())


def test_unsupported_inputs():
    with pytest.raises(ValueError, match="unsupported array type"):
        tenbin.encode_buffer([np.zeros(3, dtype=bool)])
    with pytest.raises(ValueError, match="too many dimensions"):
        tenbin.encode_buffer([np.zeros([1] * 10)])
    with pytest.raises(ValueError, match="requires a list"):
        tenbin.encode_buffer(np.zeros(3))
    with pytest.raises(ValueError, match="numpy arrays"):
        tenbin.encode_buffer(["text"])


def test_stream_write_read_and_cross():
    arrays = sample_arrays()
    stream = io.BytesIO()
    tenbin.write(stream, arrays, infos=[str(i) for i in range(len(arrays))])
    assert stream.getvalue() == bytes(ref.encode_buffer(arrays, infos=[str(i) for i in range(len(arrays))]))
    stream.seek(0)
    assert_same_arrays(tenbin.read(stream), arrays)
    stream.seek(0)
    assert_same_arrays(tenbin.read(stream, n=2), arrays[:2])
    stream2 = io.BytesIO()
    ref.write(stream2, arrays)
    stream2.seek(0)
    assert_same_arrays(tenbin.read(stream2), arrays)


def test_save_load_files_cross(tmp_path):
    arrays = sample_arrays()
    ours, theirs = str(tmp_path / "ours.ten"), str(tmp_path / "theirs.ten")
    tenbin.save(ours, *arrays)
    ref.save(theirs, *arrays)
    assert (tmp_path / "ours.ten").read_bytes() == (tmp_path / "theirs.ten").read_bytes()
    assert_same_arrays(ref.load(ours), arrays)
    assert_same_arrays(tenbin.load(theirs), arrays)
    with pytest.raises(ValueError, match=r"\.ten"):
        tenbin.save(str(tmp_path / "x.bin"), *arrays)
    tenbin.save(str(tmp_path / "x.bin"), *arrays, nocheck=True)
    assert_same_arrays(tenbin.load(str(tmp_path / "x.bin"), nocheck=True), arrays)


def chunk(payload: bytes, declared: int | None = None) -> bytes:
    n = len(payload) if declared is None else declared
    return b"~TenBin~" + struct.pack("<q", n) + payload + b"\0" * ((-len(payload)) % 64)


def header(code: bytes, shape, rank=None) -> bytes:
    words = [code.ljust(8, b"\0"), b"\0" * 8, struct.pack("<q", len(shape) if rank is None else rank)]
    return b"".join(words) + b"".join(struct.pack("<q", d) for d in shape)


@pytest.mark.parametrize(
    "buf, message",
    [
        (b"~TenBinX" + bytes(8), "bad magic"),
        (b"~TenBin~" + bytes(4), "truncated chunk header"),
        (chunk(b"x" * 8, declared=-5), "negative chunk length"),
        (chunk(b"x" * 8, declared=2**62), "runs past the end"),
        (chunk(header(b"f4", (2,))), "odd number of chunks"),
        (chunk(header(b"c8", (2,))) + chunk(bytes(8)), "unsupported array type code"),
        (chunk(header(b"f4", (2,), rank=12)) + chunk(bytes(8)), "bad rank"),
        (chunk(header(b"f4", (2,), rank=3)) + chunk(bytes(8)), "truncated"),
        (chunk(header(b"f4", (-2,))) + chunk(bytes(8)), "negative dimension"),
        (chunk(header(b"f4", (2**40, 2**40))) + chunk(bytes(8)), "needs"),
        (chunk(header(b"f4", (3,))) + chunk(bytes(8)), "needs 12"),
        (chunk(b"f4\0\0") + chunk(bytes(8)), "header chunk of 4 bytes"),
        (chunk(b"\xff" * 24) + chunk(bytes(8)), "not an ASCII string"),
    ],
)
def test_malformed_buffers_raise_value_error(buf, message):
    with pytest.raises(ValueError, match=message):
        tenbin.decode_buffer(buf)


def test_truncated_stream_with_huge_length_does_not_allocate():
    stream = io.BytesIO(b"~TenBin~" + struct.pack("<q", 2**50) + b"abc")
    with pytest.raises(ValueError, match="premature end"):
        tenbin.read(stream)
    stream = io.BytesIO(chunk(header(b"f4", (2,))))
    with pytest.raises(ValueError, match="header without data"):
        tenbin.read(stream)
    with pytest.raises(ValueError, match="bad magic"):
        tenbin.read(io.BytesIO(b"garbage!" + bytes(8)))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_buffers_never_crash(data):
    good = bytes(tenbin.encode_buffer([np.arange(6, dtype="f4").reshape(2, 3), np.arange(3, dtype="u1")]))
    buf = bytearray(good)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    try:
        out = tenbin.decode_buffer(bytes(buf[:cut]))
    except ValueError:
        return
    assert all(isinstance(a, np.ndarray) for a in out)
