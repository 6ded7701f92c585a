"""kanlib.book.notebook.setup: device, seed, threads and the printed environment."""
import numba
import pytest
import torch

from kanlib.book.notebook import set_cpu_threads, setup


@pytest.fixture
def restore_threads():
    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    yield
    numba.set_num_threads(numba_threads)
    torch.set_num_threads(torch_threads)


def test_setup_sets_both_thread_pools(restore_threads, capsys):
    env = setup("cpu", seed=3, quick=True, threads=1)
    assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    assert env.device == torch.device("cpu") and env.seed == 3 and env.mode == "quick"
    out = capsys.readouterr().out
    assert "device : cpu" in out and "1 torch threads" in out


def test_setup_keeps_the_pools_without_threads(restore_threads):
    set_cpu_threads(2) if numba.config.NUMBA_NUM_THREADS >= 2 else set_cpu_threads(1)
    before = torch.get_num_threads(), numba.get_num_threads()
    setup("cpu", show=False)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_bad_thread_counts(threads):
    with pytest.raises(ValueError, match="threads: expected an int >= 1 or None"):
        setup("cpu", show=False, threads=threads)


def test_setup_retains_freed_memory_where_glibc_allows(capsys):
    from kanlib import bench

    env = setup("cpu", show=True)
    out = capsys.readouterr().out
    if bench.can_retain_freed_memory():
        assert "retained" in env.info["malloc"] and "malloc glibc, freed memory retained" in out
    else:
        assert env.info["malloc"] == "default"


def test_bad_malloc_setting():
    with pytest.raises(ValueError, match="malloc: expected 'retain', 'default' or None, got 'keep'"):
        setup("cpu", show=False, malloc="keep")
