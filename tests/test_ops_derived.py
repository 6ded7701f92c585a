"""kanlib.ops.derived: a value derived from a tensor is built once and built again exactly when the tensor's values
may have changed (in place, or its storage swapped by assigning ``.data``), per variant, and forgotten with it."""
import gc

import torch

from kanlib.ops.derived import derived


def test_a_derived_value_is_rebuilt_when_the_tensor_changes_and_only_then():
    cache, built = {}, []
    grid = torch.arange(6.0).reshape(2, 3)

    def doubled():
        built.append(grid.clone())
        return grid * 2

    first = derived(cache, grid, doubled)
    assert derived(cache, grid, doubled) is first and len(built) == 1
    grid.data = grid.data + 1  # a new storage, the same tensor object and version
    assert torch.equal(derived(cache, grid, doubled), (torch.arange(6.0).reshape(2, 3) + 1) * 2)
    with torch.no_grad():
        grid.mul_(3)  # in place: a new version
    assert torch.equal(derived(cache, grid, doubled), grid * 2)
    assert len(built) == 3
    derived(cache, grid, doubled)
    assert len(built) == 3


def test_each_variant_has_its_own_entry_and_the_entries_go_with_the_tensor():
    """(A value that holds the tensor itself would keep it alive: the builders here make new tensors.)"""
    cache = {}
    grid = torch.ones(2, 3)
    as32 = derived(cache, grid, torch.ones(2, 3).add_(1).clone, torch.float32)
    as64 = derived(cache, grid, torch.ones(2, 3, dtype=torch.float64).clone, torch.float64)
    assert as32.dtype == torch.float32 and as64.dtype == torch.float64
    assert derived(cache, grid, lambda: None, torch.float32) is as32 and len(cache) == 2
    del grid
    gc.collect()
    assert cache == {}


def test_a_new_tensor_at_a_freed_ones_address_is_not_taken_for_it():
    cache = {}
    first = torch.zeros(4)
    assert torch.equal(derived(cache, first, torch.ones(4).clone), torch.ones(4))
    del first
    gc.collect()
    second = torch.full((4,), 5.0)
    assert torch.equal(derived(cache, second, torch.full((4,), 6.0).clone), torch.full((4,), 6.0))
