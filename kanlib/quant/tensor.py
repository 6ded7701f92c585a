"""Low-bit quantization of one tensor, with real low-bit storage.

A tensor ``x`` is mapped to integer codes ``q = clamp(round(x / scale + zero_point), qmin, qmax)`` and back
with ``x_hat = (q - zero_point) * scale``. ``scale`` and ``zero_point`` are kept with singleton dimensions
so that they broadcast against ``x``; how many there are is the spec's granularity:

- ``"tensor"``: one pair for the whole tensor;
- ``"channel"``: one per output channel, dim 1 (``O`` in pykan's coefficient layout ``[I, O, G+k]`` and in a
  ``[I, O]`` weight such as ``scale_base``);
- ``"edge"``: one per ``(i, o)`` edge, dims 0 and 1 of a tensor with at least 3 dimensions (on a 2-D weight
  that would be one scale per element, so it is refused).

Schemes: ``"symmetric"`` codes lie in ``[-2^(b-1), 2^(b-1) - 1]`` with ``zero_point == 0`` and
``scale = amax / (2^(b-1) - 1)``; ``"affine"`` codes lie in ``[0, 2^b - 1]`` and the range ``[lo, hi]`` is
mapped onto the full code range. The affine ``zero_point`` is kept as a float (an offset in code units), so
a range that does not contain 0, such as all-positive data, still uses every code.

A group whose calibrated range is zero (a constant or all-zero tensor, channel or edge) never divides by
zero: its scale falls back to ``|c|`` (symmetric, code +-1) or 1 (affine, and the all-zero case), which makes
its dequantization exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..checks import check_choice, check_int

SCHEMES = ("symmetric", "affine")
GRANULARITIES = ("tensor", "channel", "edge")
CALIBRATIONS = ("minmax", "percentile")
AXIS_LAYOUTS = ("auto", "coef", "weight")

# torch.quantile refuses inputs with more elements than this; above it the quantile is computed by sorting.
_QUANTILE_MAX_NUMEL = 2 ** 24


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a tensor: bit width (2..8), scheme, granularity and calibration.

    ``percentile`` (in (50, 100]) is used only by ``calibration="percentile"``: symmetric clips ``|x|`` at
    that percentile, affine clips both tails (at ``100 - percentile`` and ``percentile``).
    """

    bits: int
    scheme: str = "symmetric"
    granularity: str = "tensor"
    calibration: str = "minmax"
    percentile: float = 99.9

    def __post_init__(self):
        _check_bits(self.bits)
        for name, value, allowed in (("scheme", self.scheme, SCHEMES),
                                     ("granularity", self.granularity, GRANULARITIES),
                                     ("calibration", self.calibration, CALIBRATIONS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)):
            raise ValueError(f"percentile must be a number in (50, 100], got {self.percentile!r}")
        if not (50.0 < float(self.percentile) <= 100.0):
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.scheme == "symmetric" else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.scheme == "symmetric" else 2 ** self.bits - 1


def _check_tensor(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"expected a non-empty tensor, got shape {tuple(x.shape)}")
    nan, bad = torch.isnan(x).sum().item(), (~torch.isfinite(x)).sum().item()
    if bad == x.numel():
        raise ValueError(f"calibration data has no finite values: all {bad} element(s) of the tensor of shape "
                         f"{tuple(x.shape)} are NaN or infinite ({nan} NaN, {bad - nan} inf); expected finite values")
    if bad:
        raise ValueError(f"expected finite values, got {bad} NaN or infinite element(s)")


def _kept_dims(x: torch.Tensor, spec: QuantSpec, axis_layout: str) -> tuple[int, ...]:
    """The dimensions that keep their own scale (the others are reduced over)."""
    check_choice("axis_layout", axis_layout, AXIS_LAYOUTS)
    if axis_layout == "coef" and x.dim() != 3:
        raise ValueError(f"axis_layout 'coef' expects a 3-D [I, O, G+k] tensor, got shape {tuple(x.shape)}")
    if axis_layout == "weight" and x.dim() != 2:
        raise ValueError(f"axis_layout 'weight' expects a 2-D [I, O] tensor, got shape {tuple(x.shape)}")
    if spec.granularity == "tensor":
        return ()
    if spec.granularity == "channel":
        if x.dim() < 2:
            raise ValueError(f"granularity 'channel' (per dim 1) expects a tensor with at least 2 dimensions, "
                             f"got shape {tuple(x.shape)}")
        return (1,)
    if x.dim() < 3:
        raise ValueError(f"granularity 'edge' (per (dim 0, dim 1)) expects a tensor with at least 3 dimensions "
                         f"such as coef [I, O, G+k], got shape {tuple(x.shape)}; use 'channel' for 2-D weights")
    return (0, 1)


def _grouped(x: torch.Tensor, kept: tuple[int, ...]) -> tuple[torch.Tensor, list[int]]:
    """x as [groups, elements per group] and the keepdim shape of one value per group."""
    rest = [d for d in range(x.dim()) if d not in kept]
    flat = x.permute(*kept, *rest).reshape(math.prod(x.shape[d] for d in kept), -1)
    keep_shape = [x.shape[d] if d in kept else 1 for d in range(x.dim())]
    return flat, keep_shape


def _quantile_rows(flat: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile with linear interpolation (torch.quantile's default).

    torch.quantile refuses inputs above ``_QUANTILE_MAX_NUMEL`` elements; then the same quantile is computed
    exactly by sorting each row (deterministic, no subsampling).
    """
    if flat.numel() <= _QUANTILE_MAX_NUMEL:
        return torch.quantile(flat, q, dim=1)
    n = flat.shape[1]
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    frac = pos - lo
    values = torch.sort(flat, dim=1).values
    return values[:, lo] + (values[:, hi] - values[:, lo]) * frac


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def calibrate(x: torch.Tensor, spec: QuantSpec, axis_layout: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point for quantizing ``x`` with ``spec``.

    ``axis_layout``: ``"coef"`` (a 3-D ``[I, O, G+k]`` coefficient tensor), ``"weight"`` (a 2-D ``[I, O]``
    weight) or ``"auto"`` (any shape; granularities still need dim 1 for channel and 3 dimensions for edge);
    a layout that does not match ``x`` raises. Both results have ``x``'s number of dimensions, with size 1 on
    the reduced dimensions, and are float32 (float64 for float64 input). Symmetric zero points are 0.
    """
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"expected a QuantSpec, got {type(spec).__name__}")
    _check_tensor(x)
    kept = _kept_dims(x, spec, axis_layout)
    flat, keep_shape = _grouped(x.detach().to(_compute_dtype(x.dtype)), kept)
    dmin, dmax = flat.amin(dim=1), flat.amax(dim=1)
    constant = dmin == dmax
    if spec.calibration == "minmax":
        lo, hi = dmin, dmax
    else:
        p = float(spec.percentile) / 100.0
        if spec.scheme == "symmetric":
            hi = _quantile_rows(flat.abs(), p)
            lo = -hi
        else:
            lo, hi = _quantile_rows(flat, 1.0 - p), _quantile_rows(flat, p)
    tiny = torch.finfo(flat.dtype).tiny
    one = torch.ones_like(dmin)
    if spec.scheme == "symmetric":
        amax = torch.maximum(hi.abs(), lo.abs())
        scale = (amax / spec.qmax).clamp_min(tiny)
        scale = torch.where(amax == 0, one, scale)
        # a constant group c: scale |c| and code +-1 (1 and code 0 when c == 0), so dequantization is exact
        scale = torch.where(constant, torch.where(dmax == 0, one, dmax.abs()), scale)
        zero_point = torch.zeros_like(scale)
    else:
        width = hi - lo
        scale = (width / (spec.qmax - spec.qmin)).clamp_min(tiny)
        scale = torch.where(width == 0, one, scale)
        zero_point = spec.qmin - lo / scale
    return scale.reshape(keep_shape), zero_point.reshape(keep_shape)


def quantize_codes(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """The codes ``clamp(round(x / scale + zero_point), qmin, qmax)``, as floats of x's shape."""
    return torch.round(x / scale + zero_point).clamp_(spec.qmin, spec.qmax)


def fake_quantize(x: torch.Tensor, spec: QuantSpec, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """x rounded to the quantization grid and back: ``(codes - zero_point) * scale``, same shape."""
    return (quantize_codes(x, spec, scale, zero_point) - zero_point) * scale


def _storage_width(bits: int) -> int:
    """Bits one code occupies in storage: 2-bit codes four to a byte, 3- and 4-bit codes in nibbles."""
    return 2 if bits == 2 else 4 if bits <= 4 else 8


def _check_bits(bits) -> None:
    check_int("bits", bits, 2, 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes in ``[0, 2^bits - 1]`` into a flat uint8 tensor, lowest bits first.

    2-bit codes go four to a byte, 3- and 4-bit codes two to a byte (3-bit codes occupy a 4-bit nibble), 5- to
    8-bit codes one to a byte. The result has ``ceil(numel / codes_per_byte)`` bytes; padding is zero.
    """
    _check_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex() \
            or codes.dtype == torch.bool:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise TypeError(f"expected an integer tensor of codes, got {got}")
    flat = codes.reshape(-1)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > 2 ** bits - 1):
        raise ValueError(f"codes must lie in [0, {2 ** bits - 1}] for {bits} bits, "
                         f"got [{int(flat.min())}, {int(flat.max())}]")
    width = _storage_width(bits)
    per_byte = 8 // width
    flat = flat.to(torch.int32)
    pad = (-flat.numel()) % per_byte
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(per_byte, device=flat.device, dtype=torch.int32) * width
    return (flat.reshape(-1, per_byte) << shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``numel`` codes of ``packed`` as a flat uint8 tensor."""
    _check_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise TypeError(f"expected a uint8 tensor of packed codes, got {got}")
    if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
        raise ValueError(f"numel must be a non-negative int, got {numel!r}")
    width = _storage_width(bits)
    per_byte = 8 // width
    expected = -(-numel // per_byte)
    if packed.numel() != expected:
        raise ValueError(f"{numel} codes of {bits} bits need {expected} packed bytes, got {packed.numel()}")
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * width
    codes = (packed.reshape(-1, 1).to(torch.int32) >> shifts) & (2 ** width - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


class QuantizedTensor:
    """A tensor stored as low-bit integer codes plus scales (and zero points for the affine scheme).

    Storage (``data``): for 5..8 bits one code per byte, int8 for the symmetric scheme and uint8 for affine,
    in the original shape; for 2..4 bits the codes, offset to ``[0, 2^bits - 1]``, packed into a flat uint8
    tensor by :func:`pack_bits` (four 2-bit codes per byte; 3-bit codes are stored in 4-bit nibbles, so they
    take as much room as 4-bit ones). Symmetric zero points are all 0 and are not stored.
    """

    def __init__(self, data: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 shape: torch.Size, dtype: torch.dtype, spec: QuantSpec):
        self.data = data
        self.scale = scale
        self._zero_point = zero_point if spec.scheme == "affine" else None
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.spec = spec

    @classmethod
    def quantize(cls, x: torch.Tensor, spec: QuantSpec, axis_layout: str = "auto",
                 qparams: tuple[torch.Tensor, torch.Tensor] | None = None) -> "QuantizedTensor":
        """x stored with ``spec``; ``qparams`` (scale, zero point) given, e.g. learned, instead of calibrated."""
        scale, zero_point = calibrate(x, spec, axis_layout) if qparams is None else qparams
        codes = quantize_codes(x.detach().to(scale.dtype), spec, scale, zero_point)
        if spec.bits > 4:
            data = codes.to(torch.int8 if spec.scheme == "symmetric" else torch.uint8)
        else:
            data = pack_bits(codes.to(torch.int32) - spec.qmin, spec.bits)
        return cls(data, scale, zero_point, x.shape, x.dtype, spec)

    @property
    def zero_point(self) -> torch.Tensor:
        return torch.zeros_like(self.scale) if self._zero_point is None else self._zero_point

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def codes(self) -> torch.Tensor:
        """The integer codes, in ``[qmin, qmax]``, as an int32 tensor of the original shape."""
        if self.spec.bits > 4:
            return self.data.to(torch.int32)
        return (unpack_bits(self.data, self.spec.bits, self.numel).to(torch.int32) + self.spec.qmin) \
            .reshape(self.shape)

    def dequantize(self) -> torch.Tensor:
        """A float tensor of the original shape and dtype."""
        q = self.codes().to(self.scale.dtype)
        return ((q - self.zero_point) * self.scale).to(self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes actually stored: codes, scales and (affine only) zero points."""
        total = self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()
        if self._zero_point is not None:
            total += self._zero_point.numel() * self._zero_point.element_size()
        return total

    def __repr__(self) -> str:
        s = self.spec
        return (f"QuantizedTensor(shape={tuple(self.shape)}, dtype={self.dtype}, bits={s.bits}, scheme={s.scheme!r}, "
                f"granularity={s.granularity!r}, nbytes={self.nbytes})")
