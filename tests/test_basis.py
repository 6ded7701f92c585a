"""Basis evaluation methods against pykan's recursion and against each other."""
import pytest
import torch
from conftest import inputs_around, random_grid
from kan.spline import B_batch

from kanlib import basis

CASES = [(1, 1), (5, 3), (7, 2), (13, 1), (20, 3), (4, 5), (3, 0), (50, 3)]


@pytest.mark.parametrize("grid_size,k", CASES)
def test_cox_de_boor_matches_pykan(grid_size, k):
    gen = torch.Generator().manual_seed(grid_size * 10 + k)
    for grid in (basis.make_grid(3, grid_size, k, dtype=torch.float64),
                 random_grid(3, grid_size, k, gen, dtype=torch.float64)):
        x = inputs_around(grid, 500, gen, outside=0.3, knots=True)
        expected = B_batch(x, grid, k=k).to(x.dtype)
        torch.testing.assert_close(basis.cox_de_boor(x, grid, k), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid_size,k", CASES)
@pytest.mark.parametrize("method", [basis.uniform_closed_form, basis.local_de_boor])
def test_local_methods_match_reference_on_uniform_grids(grid_size, k, method):
    gen = torch.Generator().manual_seed(grid_size + 100 * k)
    grid = basis.make_grid(4, grid_size, k, grid_range=(-1.5, 2.0), dtype=torch.float64)
    x = inputs_around(grid, 700, gen, outside=0.3, knots=True)
    torch.testing.assert_close(method(x, grid, k), basis.cox_de_boor(x, grid, k), rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid_size,k", CASES)
@pytest.mark.parametrize("repeat_knot", [False, True])
def test_local_de_boor_matches_reference_on_any_knots(grid_size, k, repeat_knot):
    gen = torch.Generator().manual_seed(7 * grid_size + k)
    grid = random_grid(5, grid_size, k, gen, repeat_knot=repeat_knot, dtype=torch.float64)
    x = inputs_around(grid, 700, gen, outside=0.3, knots=True)
    torch.testing.assert_close(basis.local_de_boor(x, grid, k), basis.cox_de_boor(x, grid, k), rtol=0, atol=1e-10)


def test_per_input_uniform_grids_with_different_ranges():
    gen = torch.Generator().manual_seed(3)
    knots = torch.stack([torch.linspace(lo, hi, 8, dtype=torch.float64) for lo, hi in [(-3, 1), (0.5, 0.9), (-1, 1)]])
    grid = basis.extend_grid(knots, 3)
    assert basis.is_uniform(grid)
    x = inputs_around(grid, 400, gen, outside=0.3, knots=True)
    torch.testing.assert_close(basis.uniform_closed_form(x, grid, 3), basis.cox_de_boor(x, grid, 3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("grid_size,k", [(5, 3), (1, 1), (9, 2), (6, 4)])
@pytest.mark.parametrize("uniform", [True, False])
def test_window_derivatives_match_autograd(grid_size, k, uniform):
    gen = torch.Generator().manual_seed(grid_size * k)
    grid = (basis.make_grid(3, grid_size, k, dtype=torch.float64) if uniform
            else random_grid(3, grid_size, k, gen, dtype=torch.float64))
    # away from knots, where the derivative may jump
    x = inputs_around(grid, 300, gen, outside=0.3, knots=True)[grid.shape[1]:]
    x.requires_grad_(True)
    dense = basis.cox_de_boor(x, grid, k)
    weights = torch.randn(dense.shape[-1], generator=gen, dtype=torch.float64)
    expected = torch.autograd.grad((dense * weights).sum(), x)[0]
    local = basis.local_basis(x.detach(), grid, k, uniform, derivatives=True)
    slope = basis.LocalBasis(local.start, local.derivatives, None).to_dense(dense.shape[-1])
    torch.testing.assert_close((slope * weights).sum(-1), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_window_autograd_slope_is_the_derivatives_at_and_beside_the_end_knots(k, dtype):
    """The closed form's autograd x-gradient (the edge-sparse layer's eager path) equals its derivatives where
    the half-open spans put x on the grid (the left slope at t_0) or off it (0 at t_n, where the coordinate is
    clamped: passing the clamp's slope on gave the left derivative there for k = 1)."""
    grid = basis.make_grid(2, 5, k, dtype=dtype)
    ends = torch.stack([grid[:, 0], grid[:, -1]])
    x = torch.cat([ends, torch.nextafter(ends, ends + 1), torch.nextafter(ends, ends - 1)]).requires_grad_(True)
    local = basis.local_basis(x, grid, k, True, derivatives=True)
    weights = torch.randn(local.values.shape, generator=torch.Generator().manual_seed(k), dtype=dtype)
    slope = torch.autograd.grad((local.values * weights).sum(), x)[0]
    torch.testing.assert_close(slope, (local.derivatives * weights).sum(-1), rtol=1e-5, atol=1e-5)
    assert bool((slope[1] == 0).all()) and bool((slope[3] == 0).all())  # t_n and just past it


@pytest.mark.parametrize("k", range(0, 6))
def test_uniform_matrix_is_a_partition_of_unity(k):
    t = torch.rand(100, dtype=torch.float64)
    powers = t.unsqueeze(-1) ** torch.arange(k + 1, dtype=torch.float64)
    values = powers @ basis.uniform_basis_matrix(k)
    torch.testing.assert_close(values.sum(-1), torch.ones_like(t))
    assert bool((values >= -1e-15).all())


def test_inside_grid_range_the_bases_sum_to_one():
    grid = basis.make_grid(2, 6, 3, dtype=torch.float64)
    x = torch.rand(1000, 2, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(basis.uniform_closed_form(x, grid, 3).sum(-1), torch.ones_like(x))


def test_every_basis_is_zero_outside_the_extended_grid():
    grid = basis.make_grid(2, 5, 3, dtype=torch.float64)
    x = torch.tensor([[-10.0, 3.0], [grid[0, -1].item(), -2.5]], dtype=torch.float64)
    for method in (basis.cox_de_boor, basis.uniform_closed_form, basis.local_de_boor):
        assert method(x, grid, 3).abs().max().item() < 1e-15


def test_is_uniform_detects_moved_knots():
    grid = basis.make_grid(3, 10, 3)
    assert basis.is_uniform(grid)
    grid[1, 6] += 0.01
    assert not basis.is_uniform(grid)


def test_a_float64_grid_is_uniform_only_to_float64_rounding():
    """A knot moved by 1.6e-6 of a step, or a float32 grid cast to float64, is uniform to float32's rounding
    only: taken as uniform, the closed form was 1e-7 away from the knots' own basis in float64."""
    grid = basis.make_grid(2, 5, 3, dtype=torch.float64)
    assert basis.is_uniform(grid) and basis.is_uniform(basis.make_grid(2, 200, 3, dtype=torch.float64))
    moved = grid.clone()
    moved[:, 5] += 1.6e-6 * (grid[0, 1] - grid[0, 0])
    assert not basis.is_uniform(moved) and basis.is_uniform(moved.float())
    assert not basis.is_uniform(basis.make_grid(2, 7, 3).double())


@pytest.mark.parametrize("grid_size,k", CASES)
def test_matrix_kan_matches_reference_on_uniform_grids(grid_size, k):
    gen = torch.Generator().manual_seed(31 * grid_size + k)
    grid = basis.make_grid(4, grid_size, k, grid_range=(-1.5, 2.0), dtype=torch.float64)
    x = inputs_around(grid, 700, gen, outside=0.3, knots=True)
    torch.testing.assert_close(basis.matrix_kan(x, grid, k), basis.cox_de_boor(x, grid, k), rtol=0, atol=1e-12)


def test_matrix_kan_per_input_ranges_float32_and_gradients():
    gen = torch.Generator().manual_seed(5)
    knots = torch.stack([torch.linspace(lo, hi, 6, dtype=torch.float64) for lo, hi in [(-3, 1), (0.5, 0.9)]])
    grid = basis.extend_grid(knots, 2)
    x = inputs_around(grid, 300, gen, outside=0.3, knots=True)
    torch.testing.assert_close(basis.matrix_kan(x.float(), grid.float(), 2), basis.cox_de_boor(x, grid, 2).float(),
                               rtol=0, atol=2e-6)
    x = x[grid.shape[1]:].clone().requires_grad_()  # away from knots
    weights = torch.randn(grid.shape[1] - 3, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((basis.matrix_kan(x, grid, 2) * weights).sum(), x)[0]
    want = torch.autograd.grad((basis.cox_de_boor(x, grid, 2) * weights).sum(), x)[0]
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_matrix_kan_refuses_non_uniform_knots():
    grid = random_grid(3, 5, 3, torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(ValueError, match="matrix_kan needs uniform knots.*got a non-uniform grid"):
        basis.matrix_kan(torch.zeros(2, 3, dtype=torch.float64), grid, 3)
