"""What only a CUDA device can check: a KAN trained through fit(amp="bf16") on the GPU against the same training
in float32 on the CPU. (The kernel tests in tests/test_ops_*.py run compiled on CUDA and under Triton's
interpreter elsewhere.) Skipped without a GPU; the GPU reference run (kanlib.book.gpu) runs it."""
import pytest
import torch

from kanlib import KAN, fit, symbolic_dataset

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
