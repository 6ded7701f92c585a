"""Session setup and the helpers every test file shares.

Without a CUDA device the Triton kernels run under Triton's interpreter on the CPU; the switch is read when
triton is first imported, so it is set here, before any test module imports it. The kernels' contention guard is
off (``KANLIB_CONTENTION_GUARD=0``, inherited by the processes tests start).

Helpers (``from conftest import random_grid, inputs_around, in_layout, relative_error``): random knot grids,
uniform or not; inputs that cover the extended grid and reach beyond it on both sides; the same values in another
memory layout; the relative error against a reference; ``HostReads``, a mode that lists the reads of a value back
to the host.
"""
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# No test's thread count may depend on what else the machine runs (kanlib.ops.contention); its tests set their own.
os.environ.setdefault("KANLIB_CONTENTION_GUARD", "0")

from kanlib.basis import extend_grid  # noqa: E402  (after the interpreter switch)


def random_grid(n_in: int, grid_size: int, spline_order: int, generator: torch.Generator, *, uniform: bool = False,
                repeat_knot: bool = False, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[I, G+2k+1] extended knots with a random range per input: evenly spaced, or sorted random knots
    (the shape pykan's update_grid leaves), optionally with one knot repeated."""
    low = torch.rand(n_in, 1, generator=generator, dtype=torch.float64) * 2 - 2
    width = torch.rand(n_in, 1, generator=generator, dtype=torch.float64) * 2 + 1
    if uniform:
        fractions = torch.linspace(0, 1, grid_size + 1, dtype=torch.float64).expand(n_in, -1)
    else:
        gaps = torch.rand(n_in, grid_size, generator=generator, dtype=torch.float64) + 0.2
        fractions = torch.cat([torch.zeros(n_in, 1, dtype=torch.float64), gaps.cumsum(1)], 1)
        fractions = fractions / fractions[:, -1:]
        if repeat_knot and grid_size >= 2:
            fractions[:, 1] = fractions[:, 2]
    return extend_grid(low + width * fractions, spline_order).to(dtype)


def inputs_around(grid: torch.Tensor, n: int, generator: torch.Generator, *, outside: float = 0.5,
                  dtype: torch.dtype | None = None, knots: bool = False, specials: bool = False) -> torch.Tensor:
    """x [n, I] uniform over each input's extended grid widened by ``outside`` times its width on both sides.

    ``knots``: the first rows are the knots themselves (where the half-open intervals meet). ``specials``: a row
    with +inf and -inf and a last row of NaN, where there is room.
    """
    low, high = grid[:, 0].double(), grid[:, -1].double()
    span = high - low
    u = torch.rand(n, grid.shape[0], generator=generator, dtype=torch.float64) * (1 + 2 * outside) - outside
    x = (low + u * span).to(dtype or grid.dtype)
    first = 0
    if knots:
        rows = min(n, grid.shape[1])
        x[:rows] = grid.t()[:rows].to(x.dtype)
        first = rows
    if specials and n - first >= 2:
        x[first, 0], x[first, -1] = float("inf"), float("-inf")
        x[-1] = float("nan")
    return x


LAYOUTS = ("contiguous", "strided", "transposed")


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """x [n, I]'s values in one of LAYOUTS: x itself, every other column of a tensor twice as wide, or column-major."""
    if layout == "strided":
        wide = torch.zeros(x.shape[0], 2 * x.shape[1], device=x.device, dtype=x.dtype)
        wide[:, ::2] = x
        return wide[:, ::2]
    if layout == "transposed":
        return x.t().contiguous().t()
    if layout == "contiguous":
        return x
    raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over max |want| (at least 1e-30), in float64."""
    return ((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1e-30)).item()


def fill_empty_with_nan(monkeypatch) -> None:
    """torch.empty's buffers filled with NaN (integer ones with their dtype's least value), as stale memory may be: an
    entry a kernel should write and does not then shows in its result."""
    empty = torch.empty

    def stale(*args, **kwargs):
        buffer = empty(*args, **kwargs)
        return buffer.fill_(float("nan") if buffer.is_floating_point() else torch.iinfo(buffer.dtype).min)

    monkeypatch.setattr(torch, "empty", stale)


class HostReads(TorchDispatchMode):
    """Inside, the operators that read a tensor's value back to the host (``bool(t)``, ``t.item()``), as listed in
    ``reads``: on a GPU each one waits for the stream to finish, and none may run while a CUDA graph is captured."""

    READING = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READING:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def record_flag(monkeypatch, tuner, name: str) -> list:
    """The values of the argument ``name`` at each launch through a Triton autotuner, in order."""
    seen = []
    run = tuner.run

    def recording_run(*args, **kwargs):
        seen.append(kwargs[name])
        return run(*args, **kwargs)

    monkeypatch.setattr(tuner, "run", recording_run)
    return seen


# --- the built website and a real browser (shared by the site tests) ----------------------------------------
# Imports are lazy: most test files need neither selenium nor the book.

import contextlib  # noqa: E402
import functools  # noqa: E402
import http.server  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402

import pytest  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def assets_installed() -> bool:
    """Whether the npm assets the site serves (reveal.js, MathJax, ONNX Runtime Web) are installed (`make assets`)."""
    from kanlib.book.web_assets import MissingAssetsError, asset_dir

    try:
        asset_dir("reveal.js")
        asset_dir("mathjax")
        asset_dir("onnxruntime-web")
    except MissingAssetsError:
        return False
    return True


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> pathlib.Path:
    """The folder of the site built from the committed notebooks (what `make site` publishes); skipped without
    the npm assets, except under CI."""
    if not assets_installed():
        if os.environ.get("CI"):
            pytest.fail("npm assets missing: run `make assets` (required under CI)")
        pytest.skip("npm assets missing: run `make assets` (required under CI)")
    from kanlib.book.site import build_site

    return build_site("notebooks", build_dir=tmp_path_factory.mktemp("site")).parent


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve(folder: pathlib.Path):
    """Serve `folder` over HTTP on a free local port; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium through selenium; skipped where it is not installed, except under CI."""
    if not (CHROMIUM and CHROMEDRIVER):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are required under CI (make test installs them)")
        pytest.skip("chromium/chromedriver not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(driver, url: str, screenshot: pathlib.Path | None = None) -> list[dict]:
    """Load `url`, wait until its images are complete, optionally save a screenshot; the console's errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages left
    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return document.readyState === 'complete' && Array.from(document.images).every(i => i.complete)"))
    driver.execute_script("return new Promise(r => setTimeout(r, 500))")
    if screenshot is not None:
        driver.save_screenshot(str(screenshot))
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def broken_images(driver) -> list[str]:
    """The addresses of the page's images that did not load."""
    return driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
