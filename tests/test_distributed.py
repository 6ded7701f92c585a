"""fit(distributed=True): two gloo ranks launched by torchrun (tests/distributed_fit.py) against one process on
the same batches, one rank against one process, and the errors."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distributed_fit import build
from kanlib import fit
from kanlib.distributed import TrainingGroup, device_problem, smallest_batch, training_group

SCRIPT = pathlib.Path(__file__).with_name("distributed_fit.py")
# float64 fits; LBFGS amplifies the rounding of another summation order, so its cases are short
RELATIVE_TOLERANCE = 1e-9
SAME_AS_ONE_PROCESS = ["lbfgs", "lbfgs_penalty", "adam_minibatch", "symbolic_pruned", "classification",
                       "different_models"]
LOSSES = ("train_loss", "test_loss", "train_metric", "test_metric")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """load(case) -> [rank 0's result, rank 1's result] of one torchrun launch running every case."""
    out = tmp_path_factory.mktemp("ranks")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(SCRIPT), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    def load(name):
        return [torch.load(out / f"{name}-rank{rank}.pt") for rank in (0, 1)]
    load.output = done.stdout + done.stderr
    return load


def assert_close_relative(actual: dict, expected: dict) -> None:
    """Every tensor of `actual` within RELATIVE_TOLERANCE of `expected`'s largest magnitude (exact if not float)."""
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if value.is_floating_point() and value.numel():
            atol = RELATIVE_TOLERANCE * float(value.abs().max())
            torch.testing.assert_close(actual[key], value, rtol=RELATIVE_TOLERANCE, atol=atol, msg=key)
        else:
            assert torch.equal(actual[key], value), key


def assert_same_evaluations(actual: dict, expected: dict, rtol: float = 0.0) -> None:
    assert actual["step"] == expected["step"]
    for name in LOSSES:
        assert actual[name] == pytest.approx(expected[name], rel=rtol, abs=0), name


def fit_one_process(name: str, **overrides):
    model, data, kwargs = build(name, rank=0)
    history = fit(model, data, **dict(kwargs, **overrides))
    return model, history


@pytest.mark.parametrize("name", SAME_AS_ONE_PROCESS)
def test_two_ranks_train_what_one_process_trains_on_the_same_batches(two_ranks, name):
    rank0, rank1 = two_ranks(name)
    assert "error" not in rank0, rank0["error"]
    for key, value in rank0["state"].items():
        assert torch.equal(rank1["state"][key], value), key
    assert_same_evaluations(rank1["history"], rank0["history"])
    model, history = fit_one_process(name)
    assert_close_relative(rank0["state"], model.state_dict())
    assert_same_evaluations(rank0["history"], history.as_dict(), rtol=RELATIVE_TOLERANCE)
    assert history.train_loss[-1] < history.train_loss[0]


def test_quantization_aware_ranks_end_alike(two_ranks):
    # Not compared with one process: LSQ scales its input-scale gradients by 1/sqrt(elements of the batch),
    # so a rank's shard moves those scales otherwise than the whole batch does.
    rank0, rank1 = two_ranks("qat")
    assert "error" not in rank0, rank0["error"]
    assert "layers.0.input_quant.scale" in rank0["state"]
    for key, value in rank0["state"].items():
        assert torch.equal(rank1["state"][key], value), key
    assert_same_evaluations(rank1["history"], rank0["history"])
    # its last layer's coefficients [3, 1, 8] have a size-1 axis, whose stride autograd's gradient may not keep
    assert "Grad strides do not match" not in two_ranks.output


def test_every_batch_needs_a_sample_per_rank(two_ranks):
    for result in two_ranks("tiny_last_batch"):
        assert result["error"].startswith("ValueError")
        assert "every batch needs at least 2 samples" in result["error"]
        assert "batch_size=50 the smallest holds 1" in result["error"]


def test_different_data_on_the_ranks_is_refused_on_every_rank(two_ranks):
    for result in two_ranks("different_data"):
        assert result["error"].startswith("ValueError")
        assert "['train_label'] on rank(s) [1] differ from rank 0's" in result["error"]


def test_a_problem_on_one_rank_stops_every_rank(two_ranks):
    rank0, rank1 = two_ranks("agree")
    assert "rank(s) [1] of 2 cannot train" in rank0["error"]
    assert "on rank 1 of 2: rank 1's problem" in rank1["error"]


def test_without_a_process_group_fit_says_how_to_launch():
    assert not dist.is_initialized()
    model, data, kwargs = build("lbfgs")
    with pytest.raises(RuntimeError, match=r"torchrun --nproc-per-node N .*init_process_group\(backend=\"gloo\"\)"):
        fit(model, data, distributed=True, **kwargs)


def test_distributed_must_be_a_bool():
    model, data, kwargs = build("lbfgs")
    with pytest.raises(TypeError, match="distributed must be True or False, got int"):
        fit(model, data, distributed=1, **kwargs)


@pytest.fixture
def one_rank(tmp_path):
    """A gloo process group of world size 1 in this process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name, steps", [("lbfgs", 7), ("lbfgs_penalty", 4), ("adam_minibatch", 12), ("qat", 5)])
def test_one_rank_trains_exactly_what_one_process_trains(one_rank, name, steps):
    expected, history = fit_one_process(name, steps=steps)
    model, data, kwargs = build(name)
    result = fit(model, data, distributed=True, **dict(kwargs, steps=steps))
    for key, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert_same_evaluations(result.as_dict(), history.as_dict())
    assert torch.equal(model._last_input, data["train_input"])  # refine's and prune's default samples
    assert not any(parameter._backward_hooks for parameter in model.parameters())  # fit's layout hooks are gone
    # the model trains alone afterwards
    fit(model, data, **dict(kwargs, steps=1))


def test_gradients_reach_parameters_with_their_strides_inside_the_layout_hooks():
    weight = nn.Parameter(torch.randn(3, 1, 4, dtype=torch.float64))
    source = torch.randn(3, 4, 1, dtype=torch.float64)

    def gradient_strides():
        weight.grad = None
        (weight * source.transpose(1, 2)).sum().backward()
        return weight.grad.stride()
    assert gradient_strides() != weight.stride()  # autograd's layout rule leaves the size-1 axis's stride
    with TrainingGroup.gradients_in_parameter_layout(nn.ParameterList([weight])):
        assert gradient_strides() == weight.stride()
        torch.testing.assert_close(weight.grad, source.transpose(1, 2).contiguous(), rtol=0, atol=0)
    assert gradient_strides() != weight.stride() and not weight._backward_hooks


def test_parameters_without_a_gradient_are_refused(one_rank):
    model = nn.Sequential(nn.Linear(2, 4), nn.SiLU(), nn.Linear(4, 1)).double()
    model.register_parameter("unused", nn.Parameter(torch.zeros(3, dtype=torch.float64)))
    _, data, _ = build("lbfgs")
    with pytest.raises(ValueError, match=r"gradient for every trainable parameter .* \['unused'\] got none"):
        fit(model, data, distributed=True, steps=2, progress=False)
    model.unused.requires_grad_(False)
    fit(model, data, distributed=True, steps=2, progress=False)


def test_a_wrapped_model_is_refused(one_rank):
    model, data, kwargs = build("lbfgs")
    with pytest.raises(TypeError, match=r"pass the model \(the wrapper's .module\), got a DistributedDataParallel"):
        fit(nn.parallel.DistributedDataParallel(model), data, distributed=True, **kwargs)


def test_the_group_helpers_on_one_rank(one_rank):
    group = training_group()
    assert (group.rank, group.world_size, group.backend) == (0, 1, "gloo")
    assert group.share_seed(123) == 123 and group.shard_weight(7) == 1.0
    with pytest.raises(ValueError, match="on rank 0 of 1: the reason"):
        group.agree("the reason")


def test_shard_weights_make_the_mean_of_the_batch():
    # world_size * n_r / b for tensor_split's shards: averaged over the ranks, the shard means give the batch mean
    values = torch.rand(101, dtype=torch.float64)
    for world_size in (2, 3, 8):
        ranks = [TrainingGroup(rank, world_size, "gloo") for rank in range(world_size)]
        mean = sum(g.shard(values).mean() * g.shard_weight(len(values)) for g in ranks) / world_size
        assert float(mean) == pytest.approx(float(values.mean()), rel=1e-14)
        assert sum(len(g.shard(values)) for g in ranks) == len(values)
        assert all(g.shard_weight(len(values)) == world_size * len(g.shard(values)) / len(values) for g in ranks)


def test_smallest_batch():
    assert smallest_batch(101, None) == 101
    assert smallest_batch(101, 200) == 101
    assert smallest_batch(101, 50) == 1
    assert smallest_batch(100, 50) == 50


def test_the_rank_device_rules():
    assert device_problem(torch.device("cpu"), "gloo", None) is None
    assert device_problem(torch.device("cuda", 1), "nccl", 1) is None
    assert "expected this rank's device cuda:1" in device_problem(torch.device("cuda", 0), "nccl", 1)
    assert "communicates between GPUs" in device_problem(torch.device("cpu"), "nccl", 0)
    assert device_problem(torch.device("cpu"), "cpu:gloo,cuda:nccl", 0) is None
    assert "trains on 'cpu' or this rank's CUDA device" in device_problem(torch.device("meta"), "gloo", None)
