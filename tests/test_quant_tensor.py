"""Low-bit tensor quantization: specs, calibration, bit packing, QuantizedTensor storage and round trips."""
import itertools
import zlib

import pytest
import torch

from kanlib.quant import QuantizedTensor, QuantSpec, calibrate, pack_bits, unpack_bits
from kanlib.quant import tensor as qt

BITS = list(range(2, 9))
SCHEMES = ["symmetric", "affine"]
# (shape, granularities that apply to it)
SHAPES = [((3, 5, 8), ["tensor", "channel", "edge"]),
          ((7, 1, 4), ["tensor", "channel", "edge"]),
          ((33, 17), ["tensor", "channel"])]
CASES = [(shape, g) for shape, gs in SHAPES for g in gs]


def _bound(q: QuantizedTensor) -> torch.Tensor:
    """Round-trip error bound per element: half a quantization step, plus float rounding slack."""
    return q.scale * 0.5 * (1 + 1e-5) + 1e-7


def _expected_scale_count(shape, granularity):
    return {"tensor": 1, "channel": shape[1], "edge": shape[0] * shape[1]}[granularity]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("shape,granularity", CASES)
def test_minmax_round_trip_within_half_step(bits, scheme, shape, granularity):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((bits, scheme, shape, granularity)).encode()))
    x = torch.randn(*shape, generator=gen) * 3 + 0.5
    spec = QuantSpec(bits, scheme, granularity, "minmax")
    q = QuantizedTensor.quantize(x, spec)
    y = q.dequantize()
    assert y.shape == x.shape and y.dtype == x.dtype
    assert q.scale.numel() == _expected_scale_count(shape, granularity)
    assert q.scale.dim() == x.dim() and (q.scale > 0).all()
    assert ((y - x).abs() <= _bound(q)).all()
    codes = q.codes()
    assert codes.shape == x.shape
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    # minmax uses the range: some code sits at an end of the code range in every group
    assert codes.abs().max() >= min(abs(spec.qmin), abs(spec.qmax))


@pytest.mark.parametrize("bits", BITS)
def test_storage_dtype_and_packing(bits):
    x = torch.randn(3, 5, 7)
    for scheme in SCHEMES:
        q = QuantizedTensor.quantize(x, QuantSpec(bits, scheme))
        if bits > 4:
            assert q.data.dtype == (torch.int8 if scheme == "symmetric" else torch.uint8)
            assert q.data.shape == x.shape
        else:
            per_byte = 4 if bits == 2 else 2
            assert q.data.dtype == torch.uint8
            assert q.data.numel() == -(-x.numel() // per_byte)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("numel", [1, 3, 7, 8, 33, 1001])
def test_pack_unpack_exact(bits, numel):
    gen = torch.Generator().manual_seed(bits * 1000 + numel)
    codes = torch.randint(0, 2 ** bits, (numel,), generator=gen)
    codes[0] = 2 ** bits - 1  # the extremes are always present
    if numel > 1:
        codes[-1] = 0
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    per_byte = 4 if bits == 2 else 2 if bits <= 4 else 1
    assert packed.numel() == -(-numel // per_byte)
    back = unpack_bits(packed, bits, numel)
    assert back.dtype == torch.uint8
    assert torch.equal(back.to(torch.int64), codes)


def test_pack_layout_is_low_bits_first():
    assert pack_bits(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_bits(torch.tensor([5, 10, 15]), 4).tolist() == [5 | 10 << 4, 15]


def test_nbytes_four_bit_is_half_of_int8():
    x = torch.randn(33, 17, 8)
    q8 = QuantizedTensor.quantize(x, QuantSpec(8, "symmetric", "tensor"))
    q4 = QuantizedTensor.quantize(x, QuantSpec(4, "symmetric", "tensor"))
    q2 = QuantizedTensor.quantize(x, QuantSpec(2, "symmetric", "tensor"))
    expected8 = x.numel() * 1 + 4
    assert q8.nbytes == expected8
    assert q4.nbytes == -(-x.numel() // 2) + 4
    assert abs(q4.nbytes / q8.nbytes - 0.5) < 0.01
    assert abs(q2.nbytes / q8.nbytes - 0.25) < 0.01
    assert q8.nbytes < x.numel() * x.element_size() / 3
    # affine stores zero points too; per-edge scales count
    qa = QuantizedTensor.quantize(x, QuantSpec(4, "affine", "edge"))
    assert qa.nbytes == -(-x.numel() // 2) + 2 * 33 * 17 * 4


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("calibration", ["minmax", "percentile"])
@pytest.mark.parametrize("value", [0.0, 0.1, -3.7, 1e-30])
def test_constant_tensors_round_trip_exactly(bits, scheme, calibration, value):
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.full((3, 5, 8), value, dtype=dtype)
        q = QuantizedTensor.quantize(x, QuantSpec(bits, scheme, "edge", calibration))
        assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
        assert torch.equal(q.dequantize(), x)


def test_constant_channels_inside_a_varying_tensor_are_exact():
    x = torch.randn(7, 4, 5)
    x[:, 2] = 0.25
    x[:, 3] = 0.0
    for scheme in SCHEMES:
        q = QuantizedTensor.quantize(x, QuantSpec(4, scheme, "channel"))
        y = q.dequantize()
        assert torch.equal(y[:, 2:], x[:, 2:])
        assert ((y - x).abs() <= _bound(q)).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_percentile_clips_outlier(scheme):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(33, 17, generator=gen)
    x[4, 9] = 100.0
    mm = QuantizedTensor.quantize(x, QuantSpec(4, scheme, "tensor", "minmax"))
    pc = QuantizedTensor.quantize(x, QuantSpec(4, scheme, "tensor", "percentile", percentile=99.0))
    y_mm, y_pc = mm.dequantize(), pc.dequantize()
    assert y_mm[4, 9] == pytest.approx(100.0, abs=mm.scale.item() / 2 + 1e-4)  # minmax keeps it
    assert y_pc[4, 9] < 10.0  # percentile clips it
    rest = torch.ones_like(x, dtype=torch.bool)
    rest[4, 9] = False
    err_mm = (y_mm - x).abs()[rest]
    err_pc = (y_pc - x).abs()[rest]
    assert pc.scale.item() < mm.scale.item() / 5
    assert err_pc.max() < err_mm.max()
    assert err_pc.mean() < err_mm.mean() / 3


def test_percentile_matches_torch_quantile():
    x = torch.randn(5, 6, 9)
    s, _ = calibrate(x, QuantSpec(8, "symmetric", "channel", "percentile", percentile=95.0))
    expected = torch.quantile(x.abs().transpose(0, 1).reshape(6, -1), 0.95, dim=1) / 127
    torch.testing.assert_close(s.reshape(-1), expected)
    s, z = calibrate(x, QuantSpec(8, "affine", "tensor", "percentile", percentile=95.0))
    lo, hi = torch.quantile(x.reshape(-1), 0.05), torch.quantile(x.reshape(-1), 0.95)
    torch.testing.assert_close(s.reshape(()), (hi - lo) / 255)
    torch.testing.assert_close(z.reshape(()), -lo / ((hi - lo) / 255))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_percentile_above_quantile_limit_uses_exact_sort(monkeypatch, scheme):
    x = torch.randn(4, 3, 101)
    spec = QuantSpec(6, scheme, "channel", "percentile", percentile=97.5)
    reference = calibrate(x, spec)
    monkeypatch.setattr(qt, "_QUANTILE_MAX_NUMEL", 50)
    called = []
    monkeypatch.setattr(qt.torch, "quantile", lambda *a, **k: called.append(1))
    fallback = calibrate(x, spec)
    assert not called
    for a, b in zip(reference, fallback):
        torch.testing.assert_close(a, b)


def test_symmetric_zero_point_is_zero_and_not_stored():
    x = torch.rand(3, 5, 8) + 1.0
    for g in ["tensor", "channel", "edge"]:
        spec = QuantSpec(4, "symmetric", g)
        _, z = calibrate(x, spec)
        assert torch.equal(z, torch.zeros_like(z))
        q = QuantizedTensor.quantize(x, spec)
        assert torch.equal(q.zero_point, torch.zeros_like(q.scale))
        assert q.nbytes == q.data.numel() + q.scale.numel() * 4
    codes = QuantizedTensor.quantize(x, QuantSpec(4, "symmetric")).codes()
    assert codes.min() > 0  # positive data only reaches half of the symmetric code range


@pytest.mark.parametrize("bits", BITS)
def test_affine_uses_full_code_range_for_asymmetric_data(bits):
    gen = torch.Generator().manual_seed(bits)
    x = torch.rand(33, 17, generator=gen) * 2 + 5.0  # all in [5, 7]
    spec = QuantSpec(bits, "affine", "channel")
    q = QuantizedTensor.quantize(x, spec)
    codes = q.codes()
    for o in range(17):
        assert codes[:, o].min() == 0 and codes[:, o].max() == 2 ** bits - 1
    assert ((q.dequantize() - x).abs() <= _bound(q)).all()
    sym = QuantizedTensor.quantize(x, QuantSpec(bits, "symmetric", "channel"))
    assert (q.scale < sym.scale).all()  # finer steps than symmetric on the same data


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes(dtype):
    x = torch.randn(7, 1, 4, dtype=dtype)
    q = QuantizedTensor.quantize(x, QuantSpec(8, "affine", "edge"))
    y = q.dequantize()
    assert y.dtype == dtype and y.shape == x.shape
    assert q.scale.dtype == torch.promote_types(dtype, torch.float32)
    tol = torch.finfo(dtype).eps * x.abs().max().item() * 2
    assert ((y.double() - x.double()).abs() <= q.scale.double() / 2 * (1 + 1e-5) + tol).all()


def test_quantizes_layer_coefficients():
    from kanlib.layers import BSplineKAN

    layer = BSplineKAN(5, 3)
    coef = layer.coef
    q = QuantizedTensor.quantize(coef, QuantSpec(4, "symmetric", "edge"), axis_layout="coef")
    assert q.scale.shape == (5, 3, 1)
    assert ((q.dequantize() - coef.detach()).abs() <= _bound(q)).all()
    qw = QuantizedTensor.quantize(layer.scale_base, QuantSpec(8, "affine", "channel"), axis_layout="weight")
    assert qw.scale.shape == (1, 3)


# ---- bad input: every error names what was expected and what came ----

@pytest.mark.parametrize("kwargs,match", [
    (dict(bits=1), "2..8, got 1"),
    (dict(bits=9), "2..8, got 9"),
    (dict(bits=4.0), "2..8, got 4.0"),
    (dict(bits=True), "2..8, got True"),
    (dict(bits=4, scheme="asym"), r"scheme must be one of \('symmetric', 'affine'\), got 'asym'"),
    (dict(bits=4, granularity="row"), r"granularity must be one of .*'edge'\), got 'row'"),
    (dict(bits=4, calibration="mse"), r"calibration must be one of .*'percentile'\), got 'mse'"),
    (dict(bits=4, percentile=40.0), r"\(50, 100\], got 40.0"),
    (dict(bits=4, percentile=100.5), r"\(50, 100\], got 100.5"),
])
def test_bad_spec(kwargs, match):
    wrong_type = isinstance(kwargs["bits"], (bool, float))
    with pytest.raises(TypeError if wrong_type else ValueError, match=match):
        QuantSpec(**kwargs)


def test_bad_tensors():
    spec = QuantSpec(4)
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        calibrate(torch.arange(6), spec)
    with pytest.raises(TypeError, match="torch.Tensor, got list"):
        calibrate([1.0, 2.0], spec)
    with pytest.raises(TypeError, match="QuantSpec, got dict"):
        calibrate(torch.randn(3), {"bits": 4})
    with pytest.raises(ValueError, match=r"non-empty tensor, got shape \(0, 3\)"):
        QuantizedTensor.quantize(torch.empty(0, 3), spec)
    x = torch.randn(3, 4)
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match="finite values, got 1 NaN"):
        QuantizedTensor.quantize(x, spec)


@pytest.mark.parametrize("values,counts", [
    ([float("nan")] * 12, "12 NaN, 0 inf"),
    ([float("inf"), float("-inf")] * 6, "0 NaN, 12 inf"),
    ([float("nan"), float("inf"), float("-inf")] * 4, "4 NaN, 8 inf"),
])
def test_all_non_finite_calibration_data_says_it_has_no_finite_values(values, counts):
    from kanlib.quant.qat import FakeQuantize

    x = torch.tensor(values).reshape(4, 3)
    match = (r"calibration data has no finite values: all 12 element\(s\) of the tensor of shape \(4, 3\) are "
             rf"NaN or infinite \({counts}\); expected finite values")
    for spec in (QuantSpec(8), QuantSpec(4, "affine", "channel", "percentile")):
        with pytest.raises(ValueError, match=match):
            calibrate(x, spec)
        with pytest.raises(ValueError, match=match):
            QuantizedTensor.quantize(x, spec)
        with pytest.raises(ValueError, match=match):
            FakeQuantize(spec)(x)


def test_bad_granularity_for_shape_and_layout():
    with pytest.raises(ValueError, match=r"'edge' .*at least 3 dimensions.*got shape \(33, 17\)"):
        calibrate(torch.randn(33, 17), QuantSpec(4, granularity="edge"))
    with pytest.raises(ValueError, match=r"'channel' .*at least 2 dimensions, got shape \(5,\)"):
        calibrate(torch.randn(5), QuantSpec(4, granularity="channel"))
    with pytest.raises(ValueError, match=r"'coef' expects a 3-D .*got shape \(33, 17\)"):
        calibrate(torch.randn(33, 17), QuantSpec(4), axis_layout="coef")
    with pytest.raises(ValueError, match=r"'weight' expects a 2-D .*got shape \(3, 5, 8\)"):
        calibrate(torch.randn(3, 5, 8), QuantSpec(4), axis_layout="weight")
    with pytest.raises(ValueError, match=r"axis_layout must be one of .*got 'ioj'"):
        calibrate(torch.randn(3, 5, 8), QuantSpec(4), axis_layout="ioj")


def test_bad_pack_inputs():
    with pytest.raises(ValueError, match=r"\[0, 15\] for 4 bits, got \[0, 16\]"):
        pack_bits(torch.tensor([0, 16]), 4)
    with pytest.raises(ValueError, match=r"\[0, 3\] for 2 bits, got \[-1, 2\]"):
        pack_bits(torch.tensor([-1, 2]), 2)
    with pytest.raises(TypeError, match="integer tensor of codes, got torch.float32"):
        pack_bits(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match="2..8, got 9"):
        pack_bits(torch.tensor([0, 1]), 9)
    with pytest.raises(TypeError, match="uint8 tensor of packed codes, got torch.int32"):
        unpack_bits(torch.tensor([1, 2], dtype=torch.int32), 4, 4)
    with pytest.raises(ValueError, match="7 codes of 2 bits need 2 packed bytes, got 3"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, 7)
    with pytest.raises(ValueError, match="non-negative int, got -1"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 2, -1)


def test_all_combinations_construct():
    for bits, scheme, g, c in itertools.product(BITS, SCHEMES, ["tensor", "channel", "edge"],
                                                ["minmax", "percentile"]):
        QuantSpec(bits, scheme, g, c)


def test_zero_range_fallback_scales():
    """A zero calibrated range never divides by zero: scale is |c| (symmetric) or 1 (affine, all-zero)."""
    c = torch.tensor([[[0.3] * 4, [0.0] * 4], [[-2.5] * 4, [0.0] * 4]])  # [2, 2, 4], constant edges
    s, _ = calibrate(c, QuantSpec(3, "symmetric", "edge"))
    assert s.reshape(-1).tolist() == pytest.approx([0.3, 1.0, 2.5, 1.0])
    s, z = calibrate(c, QuantSpec(3, "affine", "edge"))
    assert s.reshape(-1).tolist() == [1.0] * 4
    assert z.reshape(-1).tolist() == pytest.approx([-0.3, 0.0, 2.5, 0.0])
    # mostly zero: the 99th percentile of |x| is 0 although the tensor is not constant
    x = torch.zeros(1000)
    x[0] = 0.01
    s, _ = calibrate(x, QuantSpec(8, "symmetric", calibration="percentile", percentile=99.0))
    assert s.item() == 1.0
    s, _ = calibrate(x, QuantSpec(8, "affine", calibration="percentile", percentile=99.0))
    assert s.item() == 1.0
