"""What the torch.compile tests of every family share: a fresh compiler per test, the operators a compiled
graph holds, and a compiled model trained beside its eager twin."""
import pytest
import torch

from kanlib import KAN


@pytest.fixture(autouse=True)
def fresh_compiler():
    """Each test's compiles start from no cache: they would otherwise add up to torch._dynamo's recompile limit on
    the one forward of each layer class. (Imported by a test module, it runs for each of its tests.)"""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def kanlib_operators(counter) -> list[str]:
    """The kanlib operators in the graphs a CompileCounterWithBackend has seen, in order."""
    return [str(node.target) for graph in counter.graphs for node in graph.graph.nodes
            if str(node.target).startswith("kanlib.")]


def assert_trains_as_the_eager_model(build, batches, *, optimizer=torch.optim.Adam, **options):
    """Two models from ``build()``, the second under ``torch.compile(**options)``, take the same optimizer steps
    (lr 0.01) on ``batches`` ((x, y) pairs; a None y: the loss is the output's mean square, else the mean squared
    error); their parameters must agree after."""
    models = [build() for _ in range(2)]
    runs = [models[0], torch.compile(models[1], **options)]
    optimizers = [optimizer(model.parameters(), lr=1e-2) for model in models]
    for x, y in batches:
        for run, step in zip(runs, optimizers):
            step.zero_grad()
            out = run(x)
            loss = out.square().mean() if y is None else torch.nn.functional.mse_loss(out, y)
            loss.backward()
            step.step()
    for got, want in zip(models[1].parameters(), models[0].parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def random_batches(n, rows, n_in, n_out, seed, device):
    """n (x, y) pairs of standard normal values, drawn on the CPU and moved to device."""
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, n_in, generator=gen).to(device), torch.randn(rows, n_out, generator=gen).to(device))
            for _ in range(n)]


def pruned_kan(widths, seed, dead, device, **options):
    """A KAN with its edges switched off where a seeded uniform draw falls below ``dead``, as SparseBSplineKAN
    layers (KAN.to_sparse)."""
    model = KAN(list(widths), seed=seed, **options)
    with torch.no_grad():
        for layer in model.layers:
            draw = torch.rand(layer.mask.shape, generator=torch.Generator().manual_seed(seed + 1))
            layer.mask.copy_((draw >= dead).float())
    return model.to_sparse().to(device)
