"""Storage codecs: numpy round trips and in-graph decodes are bit-exact for every format, dtype and shape."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_formats_util import identity_model, same_bits

from onnxsparse import formats as F
from onnxsparse.errors import Decline, UsageError
from onnxsparse.formats._bits import pack_codes, unpack_codes
from onnxsparse.io import max_runtime_ir_version

DTYPES = [np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.int8),
          np.dtype(np.uint8)]
CODECS = [name for name in F.FORMATS.names() if name != "dense"]
DECODERS = [(name, decoder) for name in CODECS for decoder in F.get_codec(name).decoders]


def sparse_array(rng: np.random.Generator, shape, dtype: np.dtype, density: float, fill=0) -> np.ndarray:
    if dtype.kind == "f" or dtype.name == "bfloat16":
        values = (rng.standard_normal(shape) * 3).astype(dtype)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max + 1, shape).astype(dtype)
    values[rng.random(shape) >= density] = np.asarray(fill, dtype=dtype)
    return values


def encode_decode(array: np.ndarray, fmt: str, fill=0, options: F.CodecOptions | None = None) -> np.ndarray:
    codec = F.get_codec(fmt)
    tensor = F.TensorData("W", array, fill)
    encoded = codec.encode(tensor, options or F.CodecOptions())
    return codec.decode(encoded.arrays, encoded.params, tensor.shape, tensor.fill)


def ort_value(model: ir.Model, optimize: bool = True) -> np.ndarray:
    proto = ir.to_proto(model)
    proto.ir_version = min(proto.ir_version, max_runtime_ir_version())
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {})[0]


# ------------------------------------------------------------------ numpy codecs


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(CODECS),
    dtype=st.sampled_from(DTYPES),
    shape=st.lists(st.integers(1, 24), min_size=1, max_size=3).map(tuple),
    density=st.sampled_from([0.0, 0.02, 0.1, 0.5, 0.9, 1.0]),
    seed=st.integers(0, 2**16),
    zero_point=st.booleans(),
)
def test_numpy_round_trip_is_bit_exact(fmt, dtype, shape, density, seed, zero_point):
    rng = np.random.default_rng(seed)
    fill = 0
    if zero_point and dtype.kind in "iu" and fmt != "coo":
        fill = int(rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max + 1))
    array = sparse_array(rng, shape, dtype, density, fill)
    tensor = F.TensorData("W", array, fill)
    try:
        F.get_codec(fmt).check(tensor, F.CodecOptions())
    except Decline as exc:
        assert fmt == "bsr", exc.reason  # only bsr can refuse a shape (no candidate block divides it)
        return
    assert same_bits(encode_decode(array, fmt, fill), array)


@pytest.mark.parametrize("fmt", CODECS)
def test_special_values_survive(fmt):
    array = np.zeros((4, 16), np.float32)
    array[0, 3] = -0.0
    array[1, 5] = np.nan
    array[2, 7] = np.float32(np.frombuffer(b"\x01\x00\xc0\x7f", np.float32)[0])  # NaN with payload
    array[3, 15] = np.inf
    out = encode_decode(array, fmt)
    assert same_bits(out, array)
    assert np.signbit(out[0, 3])


@pytest.mark.parametrize("width", [2, 4, 8, 16])
@pytest.mark.parametrize("first", [0, 3])
def test_delta_long_gaps_use_filler_entries(width, first):
    array = np.zeros(300_000, np.float32)
    positions = [first, 5, 70_000, 299_999]
    array[positions] = [1, 2, 3, 4]
    codec = F.get_codec("delta")
    encoded = codec.encode(F.TensorData("W", array), F.CodecOptions(delta_widths=(width,)))
    longest = (1 << width) if width < 8 else (1 << width) - 1  # byte-wide codes store the step itself
    entries = [0] + positions if first else positions  # an anchor entry sits at position 0
    gaps = np.diff(entries)
    assert encoded.params["count"] == 1 + sum(math.ceil(g / longest) for g in gaps)
    assert same_bits(codec.decode(encoded.arrays, encoded.params, array.shape, np.float32(0)), array)


def test_delta_reads_the_unanchored_layout_of_earlier_files():
    """Files written before the anchored layout stored gap-1 codes from position -1."""
    codec = F.get_codec("delta")
    codes = np.array([2, 0, 4], np.int64)  # positions 2, 3, 8
    values = np.array([1, 2, 3], np.float32)
    arrays = {"gaps": codes.astype(np.uint8), "values": values}
    out = codec.decode(arrays, {"width": 8, "count": 3}, (10,), np.float32(0))
    assert out.tolist() == [0, 0, 1, 2, 0, 0, 0, 0, 3, 0]


def test_delta_picks_narrow_gaps_when_dense_and_wide_when_sparse():
    rng = np.random.default_rng(0)
    codec = F.get_codec("delta")
    dense = sparse_array(rng, (200_000,), np.dtype(np.float32), 0.5)
    sparse = sparse_array(rng, (200_000,), np.dtype(np.float32), 0.02)
    assert codec.encode(F.TensorData("a", dense), F.CodecOptions()).params["width"] <= 4
    assert codec.encode(F.TensorData("b", sparse), F.CodecOptions()).params["width"] >= 8


@pytest.mark.parametrize("width", [2, 4, 8, 16])
def test_pack_unpack_codes(width):
    rng = np.random.default_rng(width)
    codes = rng.integers(0, 1 << width, 1001)
    assert np.array_equal(unpack_codes(pack_codes(codes, width), width, codes.size), codes)


def test_csr_uses_narrowest_index_types():
    rng = np.random.default_rng(0)
    narrow = F.get_codec("csr").encode(F.TensorData("a", sparse_array(rng, (10, 200), np.dtype(np.float32), 0.1)),
                                       F.CodecOptions())
    assert narrow.arrays["col_indices"].dtype == np.uint8
    assert narrow.arrays["row_ptr"].dtype == np.uint8
    wide = F.get_codec("csr").encode(F.TensorData("b", sparse_array(rng, (4, 70_000), np.dtype(np.float32), 0.01)),
                                     F.CodecOptions())
    assert wide.arrays["col_indices"].dtype == np.int32
    assert wide.arrays["row_ptr"].dtype == np.uint16


def test_bsr_block_given_or_chosen():
    rng = np.random.default_rng(0)
    array = np.zeros((32, 48), np.float32)
    blocks = rng.random((8, 12)) < 0.2
    array[np.repeat(np.repeat(blocks, 4, 0), 4, 1)] = 1.5
    codec = F.get_codec("bsr")
    chosen = codec.encode(F.TensorData("a", array), F.CodecOptions())
    assert chosen.params["block"] == [4, 4]  # the block structure is found
    assert chosen.params["count"] == blocks.sum()
    given_ = codec.encode(F.TensorData("a", array), F.CodecOptions(block=(2, 8)))
    assert given_.params["block"] == [2, 8]
    assert same_bits(codec.decode(given_.arrays, given_.params, array.shape, np.float32(0)), array)
    with pytest.raises(Decline, match="does not divide"):
        codec.check(F.TensorData("a", array), F.CodecOptions(block=(5, 5)))


def test_bitmask_size_is_n_bits_plus_values():
    rng = np.random.default_rng(0)
    array = sparse_array(rng, (1000, 7), np.dtype(np.float16), 0.3)
    encoded = F.get_codec("bitmask").encode(F.TensorData("a", array), F.CodecOptions())
    k = int(np.count_nonzero(array))
    assert encoded.payload_bytes == math.ceil(array.size / 8) + 2 * k


def test_coo_refuses_nonzero_fill():
    array = np.full((8, 8), 128, np.uint8)
    array[0, 0] = 3
    with pytest.raises(Decline, match="fill"):
        F.get_codec("coo").check(F.TensorData("a", array, 128), F.CodecOptions())


# ---------------------------------------------------------------- decode graphs


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("fmt,decoder", DECODERS)
def test_decode_graph_is_bit_exact_in_onnxruntime(fmt, decoder, dtype):
    rng = np.random.default_rng(7)
    fill = 0
    array = sparse_array(rng, (24, 40), dtype, 0.2, fill)
    array[3] = fill  # an empty row
    model = identity_model(array)
    tensor = F.TensorData("W", array, fill)
    if decoder == "unpool" and dtype.name not in ("float32", "float16"):
        with pytest.raises(Decline, match="MaxUnpool"):
            F.candidate(tensor, fmt, F.CodecOptions(), 18, decoder=decoder)
        return
    chosen = F.candidate(tensor, fmt, F.CodecOptions(), 18, decoder=decoder)
    assert isinstance(chosen, F.Candidate), chosen
    F.store(model, "W", tensor, chosen)
    proto = ir.to_proto(model)
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    expected = array.astype(np.float32) if dtype.name == "bfloat16" else array
    for optimize in (True, False):  # folded at session creation, and run as a graph
        assert same_bits(ort_value(model, optimize), expected)


@pytest.mark.parametrize("fmt,decoder", DECODERS)
@pytest.mark.parametrize("case", ["all_fill", "no_fill", "single", "odd_length", "zero_point"])
def test_decode_graph_edge_cases(fmt, decoder, case):
    rng = np.random.default_rng(3)
    dtype, fill = np.dtype(np.float32), 0
    if case == "all_fill":
        array = np.zeros((16, 16), dtype)
    elif case == "no_fill":
        array = rng.standard_normal((16, 16)).astype(dtype) + 10
    elif case == "single":
        array = np.zeros((1, 1), dtype)
        array[0, 0] = 2
    elif case == "odd_length":
        array = sparse_array(rng, (13,), dtype, 0.3)
    else:
        dtype, fill = np.dtype(np.uint8), 128
        array = sparse_array(rng, (12, 8), dtype, 0.25, fill)
    tensor = F.TensorData("W", array, fill)
    try:
        chosen = F.candidate(tensor, fmt, F.CodecOptions(), 18, decoder=decoder)
    except Decline as exc:  # the only refusals: coo with a non-zero fill, bsr on an odd shape
        reason = str(exc)
        assert ((fmt == "coo" and case == "zero_point" and "fill" in reason)
                or (decoder == "unpool" and case == "zero_point" and "MaxUnpool" in reason)
                or (fmt == "bsr" and "divide" in reason))
        return
    model = identity_model(array)
    spec = F.store(model, "W", tensor, chosen)
    unused = [name for name, value in model.graph.initializers.items() if not value.uses()]
    assert not unused  # e.g. an all-fill tensor stores no payload (onnxruntime would warn)
    assert same_bits(F.decode_stored(model, spec), array)
    assert same_bits(ort_value(model), array)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), np.dtype(np.float16)], ids=lambda d: d.name)
@pytest.mark.parametrize("fmt,decoder", [d for d in DECODERS if d[0] != "coo"])
def test_decode_graphs_run_in_the_onnx_reference_evaluator(fmt, decoder, dtype):
    """A second runtime: onnx's reference implementation decodes every graph bit for bit."""
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(11)
    array = sparse_array(rng, (16, 24), dtype, 0.25)
    tensor = F.TensorData("W", array, 0)
    chosen = F.candidate(tensor, fmt, F.CodecOptions(), 18, decoder=decoder)
    assert isinstance(chosen, F.Candidate), chosen
    model = identity_model(array)
    F.store(model, "W", tensor, chosen)
    (out,) = ReferenceEvaluator(ir.to_proto(model)).run(None, {})
    assert same_bits(np.asarray(out, dtype=dtype), array)


def test_decoder_variants_need_their_opset():
    rng = np.random.default_rng(0)
    tensor = F.TensorData("W", sparse_array(rng, (64, 64), np.dtype(np.float32), 0.05))
    assert F.candidate(tensor, "bitmask", F.CodecOptions(), 15).decoder == "gather"
    assert F.candidate(tensor, "bitmask", F.CodecOptions(), 16).decoder == "scatter"
    denser = F.TensorData("W", sparse_array(rng, (64, 64), np.dtype(np.float32), 0.5))
    assert F.candidate(denser, "bitmask", F.CodecOptions(), 16).decoder == "gather"
    assert F.candidate(denser, "bitmask", F.CodecOptions(), 16, decoder="scatter").decoder == "scatter"
    with pytest.raises(Decline, match="needs opset 16"):
        F.candidate(tensor, "csr", F.CodecOptions(), 13)
    bf16 = F.TensorData("W", sparse_array(rng, (16, 16), np.dtype(ml_dtypes.bfloat16), 0.2))
    with pytest.raises(Decline, match="needs opset 13"):
        F.candidate(bf16, "delta", F.CodecOptions(), 12)


def test_delta_decodes_with_maxunpool_only_for_zero_filled_floats():
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float16):
        tensor = F.TensorData("W", sparse_array(rng, (64, 64), np.dtype(dtype), 0.1))
        chosen = F.candidate(tensor, "delta", F.CodecOptions(), 18)
        assert chosen.decoder == "unpool"
        assert chosen.encoded.arrays["values"].shape[:2] == (1, 1)  # MaxUnpool reads [N, C, k]
    int8 = F.TensorData("W", sparse_array(rng, (64, 64), np.dtype(np.int8), 0.1))
    assert F.candidate(int8, "delta", F.CodecOptions(), 18).decoder == "scatter"
    shifted = F.TensorData("W", sparse_array(rng, (64, 64), np.dtype(np.float32), 0.1, 1.5), 1.5)
    assert F.candidate(shifted, "delta", F.CodecOptions(), 18).decoder == "scatter"
    with pytest.raises(Decline, match="MaxUnpool"):
        F.candidate(int8, "delta", F.CodecOptions(), 18, decoder="unpool")


def test_decode_larger_than_onnxruntime_folds_is_refused(monkeypatch):
    """onnxruntime folds nothing above 1 GiB: such a decode would run at every inference."""
    from onnxsparse.formats import storage

    rng = np.random.default_rng(0)
    tensor = F.TensorData("W", sparse_array(rng, (64, 64), np.dtype(np.float32), 0.1))
    monkeypatch.setattr(storage, "FOLD_LIMIT_BYTES", 64 * 64 * 4 - 1)
    for fmt in ("delta", "bitmask", "csr"):
        with pytest.raises(Decline, match="every inference"):
            F.candidate(tensor, fmt, F.CodecOptions(), 18)
    chosen, reason = F.choose(tensor, F.AUTO, F.CodecOptions(), 18)
    assert chosen.format == "dense" and "every inference" in reason
    monkeypatch.setattr(storage, "FOLD_LIMIT_BYTES", 64 * 64 * 4)
    assert F.candidate(tensor, "delta", F.CodecOptions(), 18).format == "delta"


def test_auto_is_no_larger_than_any_format():
    rng = np.random.default_rng(1)
    for density in (0.05, 0.2, 0.5):
        tensor = F.TensorData("W", sparse_array(rng, (64, 128), np.dtype(np.float32), density))
        chosen, _ = F.choose(tensor, F.AUTO, F.CodecOptions(), 18, slack=0.0)
        sizes = [F.candidate(tensor, f, F.CodecOptions(), 18) for f in ("bitmask", "delta", "csr", "bsr")]
        assert chosen.stored_bytes == min([c.stored_bytes for c in sizes] + [tensor.n * 4])


def test_explicit_format_larger_than_dense_stays_dense():
    tensor = F.TensorData("W", np.ones((64, 64), np.float32))
    chosen, reason = F.choose(tensor, "csr", F.CodecOptions(), 18)
    assert chosen.format == "dense" and "csr would take" in reason


def test_information_bound():
    assert F.information_bound_bits(10, 0, 32) == 0
    assert F.information_bound_bits(10, 3, 32) == pytest.approx(3 * 32 + math.log2(math.comb(10, 3)))
    n = 1_000_000
    per_element = F.information_bound_bits(n, n // 10, 32) / n
    assert per_element == pytest.approx(3.2 + 0.469, abs=1e-3)  # METHODS.md: 3.67 bits at 90%


def test_registry_rejects_unknown_and_duplicates():
    with pytest.raises(UsageError, match="unknown storage format"):
        F.get_codec("nope")
    with pytest.raises(ValueError, match="already registered"):
        F.FORMATS.register("csr")(type("X", (F.Codec,), {}))
    assert set(F.DEFAULT_FORMATS) <= set(F.FORMATS.names())
    assert F.format_choices()[0] == "auto"


def test_codec_check_declines_by_raising_and_a_returned_reason_is_still_read(monkeypatch):
    """Built-in codecs raise ``Decline``; a plug-in codec written for earlier versions returns its reason."""
    coo = F.FORMATS.get("coo")

    class ReturnsReason(coo):  # type: ignore[misc, valid-type]  # a class from the registry
        def check(self, tensor, options):
            return "plug-in says no"

    monkeypatch.setitem(F.FORMATS._items, "oldstyle", ReturnsReason)
    tensor = F.TensorData("W", np.array([[0.0, 1.0], [0.0, 0.0]], dtype=np.float32))
    with pytest.raises(Decline, match="^plug-in says no$") as returned:
        F.candidate(tensor, "oldstyle", F.CodecOptions(), 17)
    assert returned.value.subject == "W"
    with pytest.raises(Decline, match="^empty tensor$") as raised:
        F.get_codec("csr").check(F.TensorData("E", np.zeros((0, 3), dtype=np.float32)), F.CodecOptions())
    quantized = F.TensorData("Q", np.array([[3, 5], [3, 3]], dtype=np.int8), np.array(3, dtype=np.int8))
    with pytest.raises(Decline, match="coo implies zeros") as raised:
        F.candidate(quantized, "coo", F.CodecOptions(), 17)
    assert raised.value.subject == "Q"
    assert F.candidate(tensor, "coo", F.CodecOptions(), 17).format == "coo"
