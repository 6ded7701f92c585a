"""No layer reads a value back to the host in a forward or backward through the Triton kernels: on a GPU each such
read waits for the stream to finish, and a CUDA graph (torch.compile's mode="reduce-overhead") cannot capture one.
Under the Triton interpreter on the CPU the same Python runs, so the reads show here too."""
import pytest
import torch
from conftest import HostReads

from kanlib import RBFKAN, RSWAFKAN, BSplineKAN, ChebyKAN, ReLUKAN, SparseBSplineKAN

pytest.importorskip("triton")


def adapted(layer):
    """layer with knots that update_grid spaced unevenly after skewed samples."""
    with torch.no_grad():
        layer.update_grid(torch.rand(50, layer.in_features, generator=torch.Generator().manual_seed(1)) ** 3)
    assert not layer.is_uniform()
    return layer


LAYERS = {
    "bspline": lambda: BSplineKAN(3, 4, grid_size=5, backend="triton"),
    "bspline-local": lambda: BSplineKAN(3, 4, grid_size=60, backend="triton"),  # the local-support kernels
    "bspline-adapted-grid": lambda: adapted(BSplineKAN(3, 4, grid_size=4, spline_order=1, backend="triton")),
    "chebyshev": lambda: ChebyKAN(3, 4, degree=3, backend="triton"),
    "rbf": lambda: RBFKAN(3, 4, backend="triton"),
    "rswaf": lambda: RSWAFKAN(3, 4, backend="triton"),
    "relu": lambda: ReLUKAN(3, 4, backend="triton"),
    "sparse": lambda: SparseBSplineKAN(3, 4, [(0, 1), (2, 0), (2, 3)], backend="triton"),
}


@pytest.mark.parametrize("name", LAYERS)
def test_forward_and_backward_read_nothing_back(name):
    """After a first call (which may read the knots once, to see whether the grid is uniform)."""
    torch.manual_seed(0)
    layer = LAYERS[name]()
    x = (torch.rand(6, 3) * 2.4 - 1.2).requires_grad_()
    x.detach()[1, 2] = float("nan")
    layer(x).nan_to_num().sum().backward()
    with HostReads() as forward:
        out = layer(x)
    with HostReads() as backward:
        out.nan_to_num().square().sum().backward()
    assert forward.reads == [] and backward.reads == [], (forward.reads, backward.reads)
    with HostReads() as check:  # the mode sees a read where there is one
        bool(torch.isfinite(out).all())
    assert check.reads


@pytest.mark.parametrize("table_bits", [None, 8])
def test_a_quantized_model_reads_nothing_back(table_bits):
    """Its layers' weights in integers (table_bits None) or also their basis from a lookup table, whose activation
    scale the kernel takes as a number: read from its buffer once, not on every call."""
    from kanlib import KAN
    from kanlib.quant.ptq import quantize

    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1
    quantized = quantize(KAN([3, 4, 2], grid_size=5, seed=0), bits=8, table_bits=table_bits, calib=x,
                         backend="triton")
    first = quantized(x)
    with HostReads() as forward:
        again = quantized(x)
    assert forward.reads == []
    assert torch.equal(first, again)
