"""Session setup. Without a CUDA device the Triton kernels run under Triton's interpreter on the CPU; the
switch is read when triton is first imported, so it is set here, before any test module imports it."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
