"""The GPU reference run: one prepared command that checks and measures everything on a GPU inside a fixed
time budget, and the tools around it.

- :func:`download_wheels` (``make gpu-wheels``, where the package registries are reachable): the Python 3.12
  wheels of what a bare GPU image lacks (pykan, papermill and the Jupyter kernel) and kanlib itself, into
  ``.whl/``, one version of each; raises when the tree and the wheels would not fit the 64 MiB a lent GPU
  machine receives.
- :func:`run_reference` (``make gpu-reference``, on the GPU): the CUDA tests (the local-support and edge-sparse
  kernels' next), then ``bench layer`` (its grid sweep in one process, dense and the layer also replayed from CUDA
  graphs), ``profile`` (where the layer's time goes, at G = 5 and 50, and at G = 5 under torch.compile's CUDA
  graphs), ``bench prune``, ``bench kernel`` (one process per grid size), ``bench images`` and ``bench families``
  with ``--device cuda``, the basis families' Triton tests, the layers under ``torch.compile`` and ``bench quant``,
  each step under its own timeout inside one deadline (the figures a GPU has not yet given first), a failing step
  recorded without stopping the next; it packs the new results and the log into a few files and prints the targets.
  ``rehearse=True`` runs the same steps on the CPU with tiny sizes (the kernels under Triton's interpreter), which
  is how the tests check the run end to end.
- :func:`import_reference` (``make gpu-import FROM=folder``): puts what came back into ``data/results/``,
  refusing anything that was not measured on a GPU. The chapters that show GPU figures read them from there
  when they are executed again (``python -m kanlib run``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence

from ..checks import MIB, check_output_dir
from ..ops.triton_tuning import AUTOTUNE_ENV
from .paths import PROJECT_ROOT, RESULTS_PATH

__all__ = ["WHEEL_DIR", "GPU_IMAGE_PACKAGES", "download_wheels", "Step", "reference_steps", "run_reference",
           "import_reference", "GPUImportError"]

WHEEL_DIR = PROJECT_ROOT / ".whl"
TREE_LIMIT_BYTES = 64 * MIB  # what a lent GPU machine receives: the working tree and the carried wheels
WHEEL_REQUIREMENTS = ("pykan==0.2.8", "flashkan==0.2.0", "inkan==0.5.2", "papermill", "nbformat", "nbclient",
                      "ipykernel")
# The notebooks' `from myst_nb import glue` needs myst-nb and docutils alone, not the Sphinx stack it requires.
WHEELS_WITHOUT_REQUIREMENTS = ("myst-nb>=1,<2", "docutils<0.22")
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux1_x86_64")
# What the GPU machines' image already holds (its package list, read 2026-11-17): carried wheels of these would
# shadow the image's own builds.
GPU_IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm
transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel
wrapt xarray xxhash yarl zipp
""".split())
CUDA_TESTS = ("tests/test_ops_spline_linear_triton.py", "tests/test_ops_spline_linear_triton_weight.py",
              "tests/test_ops_spline_linear_triton_layer.py", "tests/test_ops_lut_linear.py", "tests/test_quant_ptq.py",
              "tests/test_gpu.py")
# The layers under torch.compile (its operators, autocast, CUDA graphs): after the figures, as their compiles are slow.
CUDA_COMPILE_TESTS = ("tests/test_ops_spline_linear_compiled.py", "tests/test_ops_edge_spline_linear_compiled.py",
                      "tests/test_ops_basis_linear_compiled.py")
CUDA_BASIS_TESTS = ("tests/test_ops_basis_linear_triton.py",)
# The local-support and edge-sparse kernels (their files' CPU tests left out: numba would compile on every worker).
CUDA_SPARSE_TESTS = ("tests/test_ops_spline_linear_triton_local.py", "tests/test_ops_edge_spline_linear.py")
DEADLINE_S = 540  # the whole run on the GPU, under the 10 minutes one command may take there
# A rehearsal gives each step this many times its GPU budget (the deadline stays): its tiny benchmarks' time goes to
# compiling numba's kernels in fresh processes, which a loaded machine slows past some of those budgets.
REHEARSAL_TIMEOUT_FACTOR = 3
PACK_LIMIT_BYTES = 16 * MIB  # one file that comes back from a lent machine
MIN_STEP_S = 10  # a step is not started with less of the deadline left


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_name(path: pathlib.Path) -> str:
    return _normalized(path.name.split("-")[0])


def _image_holds(name: str) -> bool:
    """Whether the GPU image already holds the package ``name`` (normalized): listed there, or one of the CUDA
    libraries torch requires (``nvidia-*``, whatever CUDA version its wheel names), which the image ships."""
    return name in GPU_IMAGE_PACKAGES or name.startswith("nvidia-")


def _tree_bytes(root: pathlib.Path = PROJECT_ROOT) -> int:
    """Bytes of what travels to a lent machine: the tracked files and the untracked ones git does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((root / name).stat().st_size for name in listed if name and (root / name).is_file())


def download_wheels(folder: str | os.PathLike[str] = WHEEL_DIR, *, python: str = sys.executable) -> list[pathlib.Path]:
    """Fill ``folder`` (emptied first) with the Python 3.12 manylinux x86-64 wheels the GPU run needs beyond the
    image (WHEEL_REQUIREMENTS and what they require, less GPU_IMAGE_PACKAGES; WHEELS_WITHOUT_REQUIREMENTS alone)
    and a wheel of kanlib; returns them.

    RuntimeError when pip fails or the tree plus the wheels exceed TREE_LIMIT_BYTES.
    """
    folder = pathlib.Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    platforms = [arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)]
    download = [python, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", "3.12",
                "--implementation", "cp", "--abi", "cp312", *platforms, "--dest", str(folder), *WHEEL_REQUIREMENTS]
    alone = [*download[:4], "--no-deps", *download[4:-len(WHEEL_REQUIREMENTS)], *WHEELS_WITHOUT_REQUIREMENTS]
    build = [python, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(folder), str(PROJECT_ROOT)]
    build_dir = PROJECT_ROOT / "build"  # setuptools' scratch folder when it builds kanlib's wheel
    had_build_dir = build_dir.exists()
    try:
        for command in (download, alone, build):
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command[:4])} ... failed:\n{done.stderr[-2000:]}")
    finally:
        if not had_build_dir and build_dir.exists():
            shutil.rmtree(build_dir)
    wanted = {_normalized(re.split(r"[=<>]", requirement)[0])
              for requirement in (*WHEEL_REQUIREMENTS, *WHEELS_WITHOUT_REQUIREMENTS)}
    for wheel in folder.glob("*.whl"):
        if _image_holds(_wheel_name(wheel)) and _wheel_name(wheel) not in wanted:
            wheel.unlink()
    wheels = sorted(folder.glob("*.whl"))
    names = [_wheel_name(wheel) for wheel in wheels]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise RuntimeError(f"expected one wheel of each package in {folder}, got several of {twice}")
    total = _tree_bytes() + sum(wheel.stat().st_size for wheel in wheels)
    if total > TREE_LIMIT_BYTES:
        raise RuntimeError(f"the tree and {folder.name}/ come to {total / MIB:.1f} MiB; a GPU machine receives at "
                           f"most {TREE_LIMIT_BYTES // MIB} MiB")
    return wheels


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the run: ``python -m <args>`` in the project root, stopped after ``timeout_s``."""

    name: str
    args: tuple[str, ...]
    timeout_s: float
    env: dict[str, str] = dataclasses.field(default_factory=dict)  # set for this step alone


def reference_steps(rehearse: bool, results_dir: pathlib.Path) -> list[Step]:
    """The steps of the run, the CUDA tests first, then the benchmarks: on CUDA the full sizes, one benchmark process
    per grid size (a step that runs out of time loses only its own figures), the tests spread over the cores with
    one tile configuration per kernel; in rehearsal tiny sizes on the CPU (the same commands)."""
    device = "cpu" if rehearse else "cuda"
    out = ("--out-dir", str(results_dir))
    pytest = ("pytest", "-q", "-p", "no:cacheprovider")
    if rehearse:
        tests = (*pytest, "-k", "empty_batch or nan_rows or bf16", *CUDA_TESTS)
        sparse_tests = (*pytest, "-k", "triton and nan_rows", *CUDA_SPARSE_TESTS)
        basis_tests = (*pytest, "-k", "nan_in_a_row", *CUDA_BASIS_TESTS)
        compile_tests = (*pytest, "-k", "bad_operator", *CUDA_COMPILE_TESTS)
        small = ("--repeat", "2", "--warmup", "1")
        kernel = ("--batch", "7", "--width", "8", "--dtype", "float32", "--skip-pykan", *small)
        kernel_grids = layer_grids = (3,)
        layer = ("--batch", "16", "--width", "8", "--skip-pykan", *small)
        profile = ("--batch", "16", "--width", "8", "--calls", "2", "--rows", "5")
        profile_grids = (3,)
        prune = ("--quick", "--sparsity", "0", "0.9", "--train-steps", "5", "--finetune-steps", "2", *small)
        families = ("--batch", "16", "--width", "8", "--grid", "3", *small)
        quant = ("--quick", "--bits", "8", "--train-steps", "10", "--qat-steps", "3", *small)
        images = ("--quick", "--seeds", "0", "--epochs", "1")
        tuning = {}
    else:
        workers = ("-n", str(min(16, os.cpu_count() or 1))) if importlib.util.find_spec("xdist") else ()
        tests = (*pytest, *workers, *CUDA_TESTS)
        sparse_tests = (*pytest, *workers, "-k", "triton", *CUDA_SPARSE_TESTS)
        basis_tests = (*pytest, *workers, *CUDA_BASIS_TESTS)
        compile_tests = (*pytest, *workers, *CUDA_COMPILE_TESTS)
        kernel = ("--batch", "4096", "--width", "1024", "--dtype", "bfloat16", "float32")  # the GPU targets' sizes
        kernel_grids = (5, 50)
        layer = ("--batch", "1024", "--width", "256", "--skip-pykan")  # the CPU targets' sizes, for the same table
        profile = ("--batch", "1024", "--width", "256")
        profile_grids = (5, 50)  # the dense kernels, then the local-support ones
        prune = ()  # its defaults: the CPU goal's models, sparsities and layer
        layer_grids = (5, 50, 100, 200)
        families = ()  # its defaults are the CPU targets' sizes
        quant = ("--bits", "8", "4", "--train-steps", "200", "--qat-steps", "100")
        images = ()  # the 8x8 digits, the widths and seeds of the CPU goal
        tuning = {AUTOTUNE_ENV: "first"}
    bench = ("kanlib", "bench")
    grids = tuple(str(grid) for grid in layer_grids)
    steps = [
        Step("cuda tests", tests, 110, tuning),
        Step("cuda tests (local-support and edge-sparse kernels)", sparse_tests, 70, tuning),
        # one process, so that the grid sweep's ratios (G = 100 and 200 against 50) come from one run
        Step(f"bench layer (G = {', '.join(grids)})",
             (*bench, "layer", "--device", device, *layer, "--grid", *grids, *out), 110),
        *(Step(f"profile layer (G = {grid})", ("kanlib", "profile", "--device", device, *profile, "--grid", str(grid)),
               40) for grid in profile_grids),
        # the same step in CUDA graphs: what is left of it without the host's work between the kernels
        Step(f"profile compiled layer (G = {profile_grids[0]})",
             ("kanlib", "profile", "--device", device, *profile, "--grid", str(profile_grids[0]), "--compile",
              "reduce-overhead"), 60),
        Step("bench prune", (*bench, "prune", "--device", device, *prune, *out), 100),
        # each tunes both Triton kernel families (dense and local-support) over every tile configuration
        *(Step(f"bench kernel (G = {grid})", (*bench, "kernel", "--device", device, *kernel, "--grid", str(grid), *out),
               75) for grid in kernel_grids),
        # its KANs' many small shapes would each be tuned over every tile configuration: one per kernel here too
        Step("bench images", (*bench, "images", "--device", device, *images, *out), 120, tuning),
        Step("bench families", (*bench, "families", "--device", device, *families, *out), 45),
        # after the figures, so that compiling the many specializations of these kernels cannot starve them
        Step("cuda tests (basis families)", basis_tests, 70, tuning),
        Step("cuda tests (torch.compile)", compile_tests, 60, tuning),
        # its many quantized variants would each tune the table kernel over every tile configuration (it ran past
        # 90 s so on an H200): one per kernel, as its result records
        Step("bench quant", (*bench, "quant", "--device", device, *quant, *out), 90, tuning),
    ]
    if rehearse:  # the CPU's steps compile numba's kernels in fresh processes, slower still beside other work
        steps = [dataclasses.replace(step, timeout_s=REHEARSAL_TIMEOUT_FACTOR * step.timeout_s) for step in steps]
    return steps


def _install_wheels(wheels: pathlib.Path, target: pathlib.Path, log) -> dict:
    """pip-install the carried wheels into ``target`` (no index, no dependencies: they were chosen to fit)."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(target), *map(str, sorted(wheels.glob("*.whl")))]
    log.write(f"\n===== install wheels: {len(command) - 12} from {wheels}\n")
    log.flush()
    start = time.perf_counter()
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    status = "passed" if done.returncode == 0 else "failed"
    return {"step": "install wheels", "command": " ".join(command[:12]) + " ...", "timeout_s": None, "status": status,
            "returncode": done.returncode, "seconds": round(time.perf_counter() - start, 1)}


def _run_step(step: Step, log, seconds_left: float, pythonpath: str | None = None) -> dict:
    """Run one step with its output in the log; a dict of its name, status, return code and seconds."""
    timeout = min(step.timeout_s, seconds_left)
    record = {"step": step.name, "command": "python -m " + " ".join(step.args), "timeout_s": round(timeout)}
    if seconds_left < MIN_STEP_S:
        return {**record, "status": "skipped: the deadline has passed", "returncode": None, "seconds": 0.0}
    log.write(f"\n===== {step.name}: {record['command']} (at most {timeout:.0f} s)\n")
    log.flush()
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (pythonpath, env.get("PYTHONPATH"))))
    try:
        done = subprocess.run([sys.executable, "-m", *step.args], cwd=PROJECT_ROOT, stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout, env=env)
        status = "passed" if done.returncode == 0 else "failed"
        returncode = done.returncode
    except subprocess.TimeoutExpired:
        status, returncode = f"timed out after {timeout:.0f} s", None
    seconds = time.perf_counter() - start
    log.write(f"===== {step.name}: {status} in {seconds:.1f} s\n")
    log.flush()
    return {**record, "status": status, "returncode": returncode, "seconds": round(seconds, 1)}


def _targets(result_files: Sequence[pathlib.Path]) -> list[dict]:
    """The targets of the benchmarks in the new result files."""
    from ..bench import families, images, kernel, layer, prune, quant

    benchmarks = {"kernel": kernel, "quant": quant, "families": families, "images": images, "layer": layer,
                  "prune": prune}
    report = []
    for path in result_files:
        result = json.loads(path.read_text())
        benchmark = benchmarks.get(result["benchmark"])
        if benchmark is not None:
            report += [{**target, "benchmark": result["benchmark"]}
                       for target in benchmark.target_report(result["rows"])]
    return report


def _tar(path: pathlib.Path, files: Sequence[pathlib.Path]) -> pathlib.Path:
    with tarfile.open(path, "w:gz") as archive:
        for file in files:
            archive.add(file, arcname=file.name)
    return path


def run_reference(out_dir: str | os.PathLike[str], *, rehearse: bool = False, deadline_s: float = DEADLINE_S,
                  steps: Sequence[Step] | None = None, wheels: str | os.PathLike[str] | None = None) -> dict:
    """Run every step (:func:`reference_steps`) and pack into ``out_dir``: ``results.tar.gz`` (the new result
    JSONs, also left in data/results on a GPU run), ``log.txt`` and ``summary.json`` (each step's status, the
    targets); returns the summary and prints it. ``wheels``: a folder of wheels (``make gpu-wheels``) installed
    into a scratch folder first and put on the steps' PYTHONPATH."""
    out_dir = check_output_dir(out_dir, "out_dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kanlib-gpu-") as scratch:
        # A GPU run writes into data/results, where the findings notebook reads them; a rehearsal leaves the
        # checkout's results alone.
        results_dir = pathlib.Path(scratch) / "results" if rehearse else RESULTS_PATH
        results_dir.mkdir(parents=True, exist_ok=True)
        before = set(results_dir.glob("*.json"))
        planned = steps if steps is not None else reference_steps(rehearse, results_dir)
        records, pythonpath = [], None
        with (out_dir / "log.txt").open("w") as log:
            log.write(f"kanlib GPU reference run ({'rehearsal on the CPU' if rehearse else 'cuda'})\n")
            if wheels is not None:
                site = pathlib.Path(scratch) / "site"
                records.append(_install_wheels(pathlib.Path(wheels), site, log))
                pythonpath = str(site)
            for step in planned:
                records.append(_run_step(step, log, deadline_s - (time.perf_counter() - start), pythonpath))
        results = sorted(set(results_dir.glob("*.json")) - before)
        packed = [_tar(out_dir / "results.tar.gz", results)]
        targets = _targets(results)
    summary = {"rehearsal": rehearse, "seconds": round(time.perf_counter() - start, 1), "steps": records,
               "results": [path.name for path in results],
               "targets": targets,
               "too_large": [path.name for path in packed if path.stat().st_size > PACK_LIMIT_BYTES]}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """The steps' statuses and the targets met and missed, a line each."""
    lines = [f"{'rehearsal' if summary['rehearsal'] else 'GPU reference run'} in {summary['seconds']:.0f} s:"]
    lines += [f"  {record['step']}: {record['status']} ({record['seconds']:.0f} s)" for record in summary["steps"]]
    lines.append(f"  {len(summary['results'])} result file(s)")
    for target in summary["targets"]:
        value = "missing" if target["value"] is None else f"{target['value']:.3g}"
        verdict = "" if target["met"] is None else (" met" if target["met"] else " NOT met")
        lines.append(f"  [{target['benchmark']}] {target['target']}: {value} (goal {target['goal']}){verdict}")
    if summary["too_large"]:
        lines.append(f"  too large to come back: {summary['too_large']}")
    return "\n".join(lines)


class GPUImportError(ValueError):
    """What came back is not a GPU run (or not one of this run's files)."""


def _members(archive_path: pathlib.Path, suffix: str) -> list[tuple[str, bytes]]:
    with tarfile.open(archive_path) as archive:
        members = []
        for member in archive.getmembers():
            name = pathlib.PurePosixPath(member.name).name
            if not member.isfile() or name != member.name or not name.endswith(suffix):
                raise GPUImportError(f"{archive_path}: expected plain {suffix} files, got {member.name!r}")
            members.append((name, archive.extractfile(member).read()))
        return members


def import_reference(folder: str | os.PathLike[str], *, results_dir: pathlib.Path = RESULTS_PATH) -> list[pathlib.Path]:
    """Put the result files of a GPU run (``folder`` as :func:`run_reference` packed it) into data/results; returns
    what was written. GPUImportError, before anything is written, when a result was not measured on CUDA."""
    folder = pathlib.Path(folder)
    if not (folder / "results.tar.gz").is_file():
        raise GPUImportError(f"{folder}: expected the results.tar.gz a GPU run packs, found none")
    writes = []
    for name, data in _members(folder / "results.tar.gz", ".json"):
        device = json.loads(data).get("device", {})
        if device.get("type") != "cuda":
            raise GPUImportError(f"{name}: expected a result measured on cuda, got device type {device.get('type')!r}")
        writes.append((results_dir / name, data))
    for path, data in writes:
        path.write_bytes(data)
    return [path for path, _ in writes]
