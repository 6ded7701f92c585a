"""kanlib.ops.triton_tuning: KANLIB_TRITON_AUTOTUNE=first leaves each GPU autotuner one configuration per list."""
import os
import subprocess
import sys

import pytest
import torch

from kanlib.ops.triton_tuning import AUTOTUNE_ENV, ceil_div, power_of_two_at_least, tile_config, tuned

COUNT_CONFIGS = """
import triton
from kanlib.ops.basis_linear import triton as basis
from kanlib.ops.lut_linear import triton as lut
from kanlib.ops.spline_linear import triton as dense, triton_local as local
assert not dense.INTERPRET
counts = {}
for module in (dense, local, basis, lut):
    for name, value in sorted(vars(module).items()):
        if isinstance(value, triton.runtime.autotuner.Autotuner):
            counts[f"{module.__name__}.{name}"] = len(value.configs)
print(counts)
"""


def autotuner_sizes(mode):
    pytest.importorskip("triton.backends.nvidia")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env[AUTOTUNE_ENV] = mode
    done = subprocess.run([sys.executable, "-c", COUNT_CONFIGS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return eval(done.stdout.strip().splitlines()[-1])


def test_first_keeps_one_configuration_per_list_on_a_gpu():
    every, first = autotuner_sizes("all"), autotuner_sizes("first")
    assert every.keys() == first.keys() and len(every) >= 10
    assert all(every[name] > first[name] for name in every), (every, first)
    # one per list: the dense spline and basis kernels keep a tensor-core and a full-float32 list each
    assert all(first[name] == (2 if ".spline_linear.triton." in name or ".basis_linear." in name else 1)
               for name in first), first


def test_the_setting_is_checked(monkeypatch):
    monkeypatch.setenv(AUTOTUNE_ENV, "all")
    assert tuned([1, 2, 3]) == [1, 2, 3]
    monkeypatch.setenv(AUTOTUNE_ENV, "first")
    assert tuned([1, 2, 3]) == [1]
    monkeypatch.setenv(AUTOTUNE_ENV, "fastest")
    with pytest.raises(ValueError, match=r"KANLIB_TRITON_AUTOTUNE: expected one of \('all', 'first'\), got 'fastest'"):
        tuned([1, 2, 3])


PICK_LISTS = """
import torch
from kanlib.ops.basis_linear import triton as basis
from kanlib.ops.spline_linear import triton as dense, triton_local as local
from kanlib.ops.triton_tuning import autotune
x = {dtype: torch.empty(1, dtype=dtype) for dtype in (torch.bfloat16, torch.float32, torch.float64)}
picked = {}
for name, tuner in (("dense", dense._forward_kernel), ("basis", basis._forward_kernel)):
    for dtype, tensor in x.items():
        for precision in ("ieee", "tf32"):
            chosen = tuner.early_config_prune(tuner.configs, {"x_ptr": tensor}, PRECISION=precision,
                                              DETERMINISTIC=False)
            picked[name, str(dtype), precision] = [config.kwargs for config in chosen]
            chosen = tuner.early_config_prune(tuner.configs, {"x_ptr": tensor}, PRECISION=precision,
                                              DETERMINISTIC=True)
            picked[name, str(dtype), precision, "deterministic"] = [config.kwargs for config in chosen]
for deterministic in (False, True):
    chosen = local._forward_kernel.early_config_prune(local._forward_kernel.configs, {}, DETERMINISTIC=deterministic)
    picked["local", deterministic] = [config.kwargs["SPLIT_I"] for config in chosen]
picked["zeroing"] = sorted({(config.kwargs["SPLIT_I"], config.pre_hook is not None)
                            for tuner in (dense._forward_kernel, local._forward_kernel) for config in tuner.configs})
try:
    autotune(("BLOCK_M",), [(16, 4, 2)], [], (16, 4, 1), full_precision=[(8, 4, 2)])
    picked["error"] = None
except ValueError as error:
    picked["error"] = str(error)
print(repr(picked))
"""


def test_lists_picked_by_dtype_and_precision_on_a_gpu():
    """Outside the interpreter a kernel with two lists tries the full-precision one for IEEE float32 products (and
    float64, for the basis kernels) and the tensor-core one otherwise; the spline forwards (dense and local) split
    their inputs only outside deterministic mode; two lists without a chooser are refused."""
    pytest.importorskip("triton.backends.nvidia")
    env = {key: value for key, value in os.environ.items() if key not in ("TRITON_INTERPRET", AUTOTUNE_ENV)}
    done = subprocess.run([sys.executable, "-c", PICK_LISTS], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    picked = eval(done.stdout.strip().splitlines()[-1])
    # the full-precision lists of kanlib/ops/spline_linear/triton.py's and kanlib/ops/basis_linear/triton.py's forward
    from kanlib.ops.spline_linear.triton import FORWARD_FP32_TILES

    dense_full = [dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_I", "SPLIT_I"), tile[:4])) for tile in FORWARD_FP32_TILES]
    assert {config["SPLIT_I"] for config in dense_full} == {1, 4}
    assert picked["dense", "torch.float32", "ieee"] == dense_full
    assert picked["dense", "torch.float32", "ieee", "deterministic"] == [
        config for config in dense_full if config["SPLIT_I"] == 1]
    assert picked["dense", "torch.float32", "tf32"] != dense_full
    assert picked["dense", "torch.bfloat16", "ieee"] == picked["dense", "torch.float32", "tf32"]
    tensor_core = picked["dense", "torch.bfloat16", "ieee"]
    assert {config["SPLIT_I"] for config in tensor_core} == {1, 4}
    assert picked["dense", "torch.bfloat16", "ieee", "deterministic"] == [
        config for config in tensor_core if config["SPLIT_I"] == 1]
    basis_full = [{"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_I": 16}, {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_I": 16}]
    assert picked["basis", "torch.float64", "ieee"] == picked["basis", "torch.float32", "ieee"] == basis_full
    assert picked["basis", "torch.bfloat16", "ieee"] == picked["basis", "torch.float32", "tf32"] != basis_full
    assert set(picked["local", False]) == {1, 8} and set(picked["local", True]) == {1}
    # the spline forwards' configurations zero their output before a launch exactly when they split the inputs
    assert picked["zeroing"] == [(1, False), (4, True), (8, True)]
    assert "full_precision tiles need wide" in picked["error"]


def test_a_configuration_zeroes_the_named_output_only_when_it_splits_the_inputs():
    pytest.importorskip("triton")
    out = torch.randn(3, 5)
    tile_config({"BLOCK_M": 16, "SPLIT_I": 4}, 4, 1, "out_ptr").pre_hook({"out_ptr": out, "x_ptr": None})
    assert torch.equal(out, torch.zeros(3, 5))
    assert tile_config({"BLOCK_M": 16, "SPLIT_I": 1}, 4, 1, "out_ptr").pre_hook is None
    assert tile_config({"BLOCK_M": 16}, 4, 1, "out_ptr").pre_hook is None
    assert tile_config({"BLOCK_M": 16, "SPLIT_I": 4}, 4, 1).pre_hook is None


def test_ceil_div_counts_the_blocks_that_cover_n():
    """The launch grids' host arithmetic: what triton.cdiv gives, for every n from 0 past a few blocks."""
    triton = pytest.importorskip("triton")
    for size in (1, 3, 16, 64):
        for n in range(0, 4 * size + 2):
            assert ceil_div(n, size) == triton.cdiv(n, size) == -(-n // size), (n, size)


def test_power_of_two_at_least_is_tritons_next_power_of_two():
    """The tiles' and the row buckets' host arithmetic: triton.next_power_of_2 for every n from 1 past 2**12 and
    around larger powers, and 1 for n = 0."""
    triton = pytest.importorskip("triton")
    around = [p + d for p in (2 ** 16, 2 ** 31, 2 ** 40) for d in (-1, 0, 1)]
    for n in [*range(1, 4100), *around]:
        assert power_of_two_at_least(n) == triton.next_power_of_2(n), n
    assert power_of_two_at_least(0) == 1


def test_every_kernel_launch_asks_for_fused_multiply_adds(monkeypatch):
    """Triton 3.9 fuses a multiply and an add by default and warns that 3.10 will not: each of kanlib's launches
    passes FP_FUSION itself. The interpreter drops the option, so its launches are recorded before it does."""
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    from kanlib import BSplineKAN, ChebyKAN, SparseBSplineKAN
    from kanlib.ops.lut_linear import IntegerWeights, lut_linear
    from kanlib.ops.spline_linear import triton as dense, triton_local as local
    from kanlib.ops.spline_linear.triton_weight import assemble_weight, weight_gradients
    from kanlib.ops.triton_tuning import FP_FUSION
    from kanlib.quant.table import BasisTable
    from kanlib.quant.tensor import QuantizedTensor, QuantSpec

    if not dense.INTERPRET:
        pytest.skip("records the interpreter's launches")
    launched = {}
    interpret = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        launched[f"{self.fn.__module__}.{self.fn.__name__}"] = kwargs.get("enable_fp_fusion")
        return interpret(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", run)
    torch.manual_seed(0)
    x = (torch.rand(5, 3) * 2.4 - 1.2).requires_grad_()
    layers = (BSplineKAN(3, 4, grid_size=5, backend="triton"), ChebyKAN(3, 4, degree=3, backend="triton"),
              SparseBSplineKAN(3, 4, [(0, 1), (2, 0), (2, 3)], backend="triton"))
    for layer in layers:
        layer(x).square().sum().backward()
    parameters = [t.detach() for t in (layers[0].scale_base, layers[0].scale_sp, layers[0].mask, layers[0].coef)]
    weight = assemble_weight(*parameters).requires_grad_()
    weight_gradients(*parameters[1:], torch.ones_like(weight))
    local.spline_linear_triton_any(x, weight, layers[0].grid, 3, True, "silu", kernels="local").sum().backward()
    spec = QuantSpec(8, granularity="channel")
    integers = IntegerWeights.from_quantized(QuantizedTensor.quantize(layers[0].spline_weight().detach(), spec),
                                             QuantizedTensor.quantize(layers[0].base_weight().detach(), spec))
    lut_linear(x.detach(), BasisTable(layers[0].grid, 3), integers, 0.01, "silu", 8, backend="triton")
    modules = ("spline_linear.triton", "spline_linear.triton_weight", "spline_linear.triton_local",
               "basis_linear.triton", "edge_spline_linear.triton", "lut_linear.triton")
    assert {name.rsplit(".", 1)[0].removeprefix("kanlib.ops.") for name in launched} == set(modules), launched
    assert len(launched) == 15, "\n".join(sorted(launched))
    assert FP_FUSION == {"enable_fp_fusion": True}
    assert all(launched.values()), [name for name, fused in launched.items() if not fused]
