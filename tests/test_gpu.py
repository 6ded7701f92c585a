"""What only a CUDA device can check: a KAN trained through fit(amp="bf16") on the GPU against the same training
in float32 on the CPU, and the layer benchmark's candidates recorded in CUDA graphs. (The kernel tests in
tests/test_ops_*.py run compiled on CUDA and under Triton's interpreter elsewhere.) Skipped without a GPU; the GPU
reference run (kanlib.book.gpu) runs it."""
import sys

import pytest
import torch

from kanlib import KAN, BSplineKAN, fit, symbolic_dataset
from kanlib.bench.candidates import cuda_graphed, dense_candidate, module_candidate
from kanlib.bench.layer import GRAPHED_CANDIDATES, run_layer_benchmark

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_fit_with_bf16_autocast_on_cuda_follows_the_float32_cpu_run():
    data = symbolic_dataset("exp_sin_sq", n_train=512, n_test=256, seed=0)
    histories, outputs = {}, {}
    for device, amp in (("cpu", None), ("cuda", "bf16")):
        model = KAN([2, 5, 1], grid_size=5, seed=0)
        histories[device] = fit(model, data, steps=60, opt="adam", lr=1e-2, amp=amp, device=device, seed=0,
                                progress=False)
        with torch.no_grad():
            outputs[device] = model(data["test_input"].to(device)).float().cpu()
    cpu, gpu = histories["cpu"], histories["cuda"]
    assert gpu.train_loss[-1] < 0.5 * gpu.train_loss[0], "bf16 training on the GPU did not learn"
    # bf16 keeps 8 significant bits: the two runs drift apart step by step, but stay close
    assert gpu.test_metric[-1] == pytest.approx(cpu.test_metric[-1], rel=0.1)
    scale = outputs["cpu"].abs().max()
    assert (outputs["cuda"] - outputs["cpu"]).abs().max() <= 0.05 * scale


@pytest.mark.parametrize("grid_size", [5, 50])  # the dense kernels, then the local-support ones
def test_a_graphed_layer_replays_its_step_on_the_tensors_it_recorded(grid_size):
    torch.manual_seed(0)
    layer = BSplineKAN(19, 7, grid_size=grid_size, device="cuda")
    x = (2.4 * torch.rand(33, 19, device="cuda") - 1.2).requires_grad_()  # inside and outside the grid
    grad_out = torch.randn(33, 7, device="cuda")
    eager = module_candidate("bsplinekan", layer, x)
    graphed = cuda_graphed("bsplinekan_graphed", eager, grad_out)
    assert graphed.leaves == eager.leaves and graphed.step_peak_bytes > 0
    with torch.no_grad():
        x.copy_(2.4 * torch.rand(33, 19, device="cuda") - 1.2)  # new inputs in the recorded tensor
        layer.coef.mul_(-0.5)
    got = [gradient.clone() for gradient in graphed.step()]
    want = torch.autograd.grad(layer(x), eager.leaves, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(graphed.forward().detach().clone(), layer(x).detach(), rtol=1e-5, atol=1e-5)


def test_a_graphed_dense_product_replays_its_gradients():
    eager = dense_candidate("dense", 40, 24, 9, -1.0, 1.0, torch.Generator("cuda").manual_seed(0), "cuda",
                            torch.float32)
    grad_out = torch.randn(40, 9, device="cuda")
    graphed = cuda_graphed("dense_graphed", eager, grad_out)
    got = [gradient.clone() for gradient in graphed.step()]
    want = torch.autograd.grad(eager.forward(), eager.leaves, grad_out)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)


def test_the_layer_benchmark_on_cuda_times_the_graphed_candidates(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda module, **options: module)  # the compiles are timed elsewhere
    for peer in ("flashkan", "inkan"):
        monkeypatch.setitem(sys.modules, peer, None)
    rows = run_layer_benchmark("cuda", 64, 16, [5], repeat=3, warmup=1, skip_pykan=True)
    by_name = {row["candidate"]: row for row in rows}
    for name in GRAPHED_CANDIDATES:
        assert by_name[name]["skipped"] is None, by_name[name]
        assert by_name[name]["fwdbwd_median_ms"] > 0 and by_name[name]["peak_bytes"] > by_name[name]["state_bytes"]
    assert by_name["bsplinekan_graphed"]["ratio_to_dense_graphed"] > 0
