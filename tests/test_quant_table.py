"""Lookup-table B-splines against the float basis, within the error the table's resolution allows."""
import pytest
from conftest import inputs_around, random_grid
import torch

from kanlib.basis import cox_de_boor, make_grid
from kanlib.quant.table import BasisTable
from kanlib.quant.tensor import pack_bits


def _slope_bound(grid, spline_order, samples=2048):
    """Largest |d basis / d t| over every interval, t the position within the interval (finite differences)."""
    grid = grid.double()
    t = torch.linspace(0, 1, samples + 1, dtype=torch.float64)[:-1] + 0.5 / samples
    left, width = grid[:, :-1], grid[:, 1:] - grid[:, :-1]
    worst = 0.0
    for u in range(grid.shape[1] - 1):
        points = (left[:, u:u + 1] + width[:, u:u + 1] * t).t()  # [samples, I]
        values = cox_de_boor(points, grid, spline_order)
        slope = (values[1:] - values[:-1]).abs().amax() * samples
        worst = max(worst, float(slope))
    return worst * 1.01


def _error_bound(table, slope):
    return slope * 0.5 / table.n_positions + table.scale / 2 + 1e-6


@pytest.mark.parametrize("spline_order", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("position_bits,table_bits", [(0, 8), (3, 3), (4, 2), (6, 4), (8, 8)])
@pytest.mark.parametrize("uniform", [True, False])
def test_table_basis_within_resolution(spline_order, position_bits, table_bits, uniform):
    generator = torch.Generator().manual_seed(spline_order * 100 + position_bits * 10 + table_bits)
    n_in, grid_size = 33, 7
    if uniform:
        grid = make_grid(n_in, grid_size, spline_order, (-1.3, 0.7), dtype=torch.float32)
    else:
        grid = random_grid(n_in, grid_size, spline_order, generator)
    table = BasisTable(grid, spline_order, position_bits, table_bits)
    assert table.uniform == uniform
    x = inputs_around(grid, 130, generator, outside=0.2)
    reference = cox_de_boor(x.double(), grid.double(), spline_order)
    got = table.local_basis(x).to_dense(reference.shape[-1]).double()
    error = (got - reference).abs().max().item()
    assert error <= _error_bound(table, _slope_bound(grid, spline_order))
    # the bound is not vacuous: a coarser table is measurably worse than a fine one
    if position_bits == 0 and spline_order >= 1:
        assert error > 0.1


def test_uniform_and_per_interval_tables_agree():
    grid = make_grid(5, 6, 3, (-1, 1), dtype=torch.float32)
    x = inputs_around(grid, 200, torch.Generator().manual_seed(1), outside=0.2)
    shared = BasisTable(grid, 3, 5, 6)
    per_interval = BasisTable(grid, 3, 5, 6, uniform=False)
    assert shared.shape == (1, 32, 4) and per_interval.shape == (5 * (grid.shape[1] - 1), 32, 4)
    n_basis = grid.shape[1] - 4
    torch.testing.assert_close(shared.local_basis(x).to_dense(n_basis), per_interval.local_basis(x).to_dense(n_basis),
                               atol=shared.scale * 1.0001, rtol=0)


def test_outside_grid_and_nan_give_zero_basis():
    grid = make_grid(3, 5, 3, (-1, 1), dtype=torch.float32)
    table = BasisTable(grid, 3, 4, 8)
    x = torch.tensor([[-5.0, 5.0, float("nan")], [grid[0, 0].item() - 1e-3, grid[0, -1].item(), 0.0]])
    dense = table.local_basis(x).to_dense(grid.shape[1] - 4)
    assert torch.all(dense[0] == 0) and torch.all(dense[1, :2] == 0)
    assert dense[1, 2].sum() > 0.9


def test_codes_are_low_bit_and_packed():
    grid = make_grid(4, 5, 3, (-1, 1), dtype=torch.float32)
    for bits in (2, 3, 4, 8):
        table = BasisTable(grid, 3, 6, bits)
        assert table.codes.dtype == torch.uint8
        assert int(table.codes.max()) == 2 ** bits - 1
        assert table.nbytes == pack_bits(table.codes.flatten(), bits).numel() + 4
        torch.testing.assert_close(table.values(), table.codes.float() * table.scale)
    assert BasisTable(grid, 3, 6, 4).nbytes < BasisTable(grid, 3, 6, 8).nbytes


def test_order_zero_table_is_exact():
    grid = make_grid(2, 4, 0, (-1, 1), dtype=torch.float32)
    table = BasisTable(grid, 0, 2, 3)
    x = inputs_around(grid, 50, torch.Generator().manual_seed(3), outside=0.2)
    reference = cox_de_boor(x, grid, 0)
    torch.testing.assert_close(table.local_basis(x).to_dense(reference.shape[-1]), reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    ({"position_bits": 13}, "position_bits must be an int in 0..12"),
    ({"position_bits": -1}, "position_bits must be an int in 0..12"),
    ({"table_bits": 1}, "table_bits must be an int in 2..8"),
    ({"table_bits": 9}, "table_bits must be an int in 2..8"),
    ({"table_bits": 4.0}, "table_bits must be an int"),
])
def test_bad_bits(kwargs, match):
    grid = make_grid(2, 4, 3, (-1, 1))
    error = TypeError if isinstance(next(iter(kwargs.values())), float) else ValueError
    with pytest.raises(error, match=match):
        BasisTable(grid, 3, **kwargs)


def test_bad_grid_and_input():
    with pytest.raises(ValueError, match="grid must be a floating-point"):
        BasisTable(torch.zeros(3, dtype=torch.int64), 3)
    table = BasisTable(make_grid(2, 4, 3, (-1, 1)), 3)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        table.lookup(torch.zeros(4, 3))
