"""kanlib.activations: the one registry the layers, the kernels and the cost models read."""
import pytest
import torch

from kanlib.activations import ACTIVATIONS, BASE_ACTIVATIONS, MLP_ACTIVATIONS, activation_of_module, get_activation
from kanlib.ops.spline_linear import cpu as numba_kernels
from kanlib.ops.spline_linear import triton as triton_kernels


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_derivative_module_and_function_agree(name):
    entry = ACTIVATIONS[name]
    x = torch.linspace(-4, 4, 101, dtype=torch.float64).requires_grad_()
    x = x[x.abs() > 1e-3].detach().requires_grad_()  # relu has no derivative at 0
    value = entry.function(x)
    torch.testing.assert_close(entry.module()(x), value)
    expected, = torch.autograd.grad(value.sum(), x)
    torch.testing.assert_close(entry.derivative(x.detach()), expected)
    assert activation_of_module(entry.module()) == name
    assert entry.flops >= 0 and entry.multiplications >= 0


def test_the_kernels_share_one_numbering():
    ids = {name: ACTIVATIONS[name].kernel_id for name in BASE_ACTIVATIONS}
    assert len(set(ids.values())) == len(ids)
    assert numba_kernels.ACTIVATION_IDS == ids == triton_kernels.ACTIVATION_IDS


@pytest.mark.parametrize("name", BASE_ACTIVATIONS)
def test_the_numba_kernel_computes_the_registry_function(name):
    x = torch.linspace(-3, 3, 41, dtype=torch.float64)
    kind = numba_kernels.ACTIVATION_IDS[name]
    got = torch.tensor([numba_kernels.activation_at(float(v), kind) for v in x], dtype=torch.float64)
    slope = torch.tensor([numba_kernels.activation_derivative_at(float(v), kind) for v in x], dtype=torch.float64)
    torch.testing.assert_close(got, get_activation(name).function(x))
    nonzero = x != 0
    torch.testing.assert_close(slope[nonzero], get_activation(name).derivative(x)[nonzero])


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"base_activation must be one of \['identity', 'relu', 'silu', 'tanh'\], "
                                         r"got 'gelu'"):
        get_activation("gelu", BASE_ACTIVATIONS, "base_activation")
    assert set(MLP_ACTIVATIONS) <= set(ACTIVATIONS)
