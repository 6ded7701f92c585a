"""The live demo page: `export_demo` on tiny untrained models (the files, the manifest's schema, ONNX Runtime
against the PyTorch outputs the manifest records, the models left as they were, bad arguments), then the page of
the built site in headless Chromium (both digit models on drawn strokes and on the manifest's samples, against
PyTorch and ONNX Runtime in Python; Example 1's sliders; no overflow at two widths; what it says without models).
"""
from __future__ import annotations

import copy
import json
import math
import pathlib

import numpy as np
import pytest
import torch
from conftest import open_page, serve

from kanlib import KAN, ChebyKAN, load_digits, quantize
from kanlib.book.demo import DEMO_FILES, MANIFEST, SCHEMA, export_demo
from kanlib.book.paths import DEMO_DIR
from kanlib.book.sphinx_ext import DEMO_STATIC, ORT_FILES, ORT_STATIC, demo_files, ort_files
from kanlib.checks import OutputDirError

ort = pytest.importorskip("onnxruntime")

SAMPLES = 13  # one more than a round of the ten classes, and not a multiple of it
RANGE = (-1.5, 0.5)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


REMEMBERED = torch.linspace(-1, 1, 6).reshape(3, 2)  # what the example model keeps as its samples


@pytest.fixture(scope="module")
def models(digits):
    """Untrained tiny models (what is tested is the export, not the training), in training mode, the example
    remembering the samples of a forward call."""
    digits_float = KAN([64, 5, 10], seed=0, grid_size=3).train()
    digits_quantized = quantize(digits_float, bits=8, table_bits=8, calib=digits)
    example = KAN([2, 3, 1], seed=1, grid_size=4, grid_range=RANGE).train()
    example(REMEMBERED)
    return digits_float, digits_quantized, example


@pytest.fixture(scope="module")
def exported(tmp_path_factory, models, digits):
    """(folder, manifest, the models' state dicts before the export)."""
    folder = tmp_path_factory.mktemp("demo") / "out"
    digits_float, digits_quantized, example = models
    states = [copy.deepcopy(m.state_dict()) for m in models]
    manifest = export_demo(folder, digits_float=digits_float, digits_quantized=digits_quantized, example=example,
                           digits=digits, samples=SAMPLES, example_range=RANGE)
    return folder, manifest, states


def session(path: pathlib.Path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_demo_writes_three_models_and_the_manifest_it_returns(exported, digits):
    folder, manifest, _ = exported
    assert sorted(p.name for p in folder.iterdir()) == sorted([MANIFEST, *DEMO_FILES.values()])
    assert json.loads((folder / MANIFEST).read_text(encoding="utf-8")) == manifest
    assert manifest["schema"] == SCHEMA
    for key, name in DEMO_FILES.items():
        model = manifest["models"][key]
        assert model["file"] == name and model["bytes"] == (folder / name).stat().st_size > 0
    assert manifest["models"]["float"]["widths"] == [64, 5, 10] == manifest["models"]["int8"]["widths"]
    assert (manifest["models"]["int8"]["bits"], manifest["models"]["int8"]["table_bits"]) == (8, 8)
    for key in ("float", "int8"):
        assert 0 <= manifest["models"][key]["test_accuracy"] <= 1

    samples = manifest["digits"]["samples"]
    assert len(samples) == SAMPLES
    assert [s["label"] for s in samples] == [k % 10 for k in range(SAMPLES)], "the classes in turn"
    assert len({s["index"] for s in samples}) == SAMPLES
    for sample in samples:
        pixels = torch.tensor(sample["pixels"])
        assert pixels.shape == (64,)
        assert torch.equal(pixels, digits["test_input"][sample["index"]])
        assert torch.equal(pixels * 16, (pixels * 16).round()), "counts of 0..16 divided by 16"
        assert int(digits["test_label"][sample["index"]]) == sample["label"]

    example = manifest["example1"]
    assert example["widths"] == [2, 3, 1] and example["range"] == list(RANGE) and example["inputs"] == ["x1", "x2"]
    assert [len(layer["x"]) for layer in example["layers"]] == [2, 3]
    for layer, (n_in, n_out) in zip(example["layers"], [(2, 3), (3, 1)]):
        assert len(layer["phi"]) == n_in and all(len(row) == n_out for row in layer["phi"])
        assert layer["bias"] is None
        for i in range(n_in):
            xs = layer["x"][i]
            assert len(xs) > 20 and all(a < b for a, b in zip(xs, xs[1:])), "increasing samples"
            assert all(len(curve) == len(xs) for curve in layer["phi"][i])
    assert example["layers"][0]["x"][0][0] == RANGE[0] and example["layers"][0]["x"][0][-1] == RANGE[1]


def test_onnx_runtime_on_each_file_gives_the_pytorch_outputs_of_the_manifest(exported, models):
    folder, manifest, _ = exported
    digits_float, digits_quantized, example = copy.deepcopy(models)  # a forward call changes what a KAN keeps
    pixels = np.array([s["pixels"] for s in manifest["digits"]["samples"]], dtype=np.float32)
    for key, model in (("float", digits_float), ("int8", digits_quantized)):
        logits = session(folder / DEMO_FILES[key]).run(["output"], {"input": pixels})[0]
        recorded = np.array([s["logits"][key] for s in manifest["digits"]["samples"]])
        np.testing.assert_allclose(logits, recorded, rtol=1e-4, atol=1e-4, err_msg=key)
        assert [s["prediction"][key] for s in manifest["digits"]["samples"]] == logits.argmax(1).tolist()
        with torch.no_grad():
            np.testing.assert_allclose(recorded, model(torch.from_numpy(pixels)).numpy(), rtol=1e-5, atol=1e-5)

    # Example 1 inside and outside the range: the output, every edge, and the sums the page forms from them
    example_session = session(folder / DEMO_FILES["example1"])
    generator = torch.Generator().manual_seed(7)
    x = torch.rand(9, 2, generator=generator) * 4 - 2.5
    output, edges_0, edges_1 = example_session.run(["output", "edges_0", "edges_1"], {"input": x.numpy()})
    with torch.no_grad():
        hidden = example.layers[0](x)
        np.testing.assert_allclose(output, example(x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(edges_0, example.layers[0].activations(x).numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(edges_1, example.layers[1].activations(hidden).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(edges_0.sum(1), hidden.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(edges_1.sum(1), output, rtol=1e-5, atol=1e-5)

    # the curves: the first layer's over the range, the second's over the hidden values that sweep reaches
    first, second = manifest["example1"]["layers"]
    curve_x = np.array(first["x"], dtype=np.float32).T
    np.testing.assert_allclose(example_session.run(["edges_0"], {"input": curve_x})[0].transpose(1, 2, 0),
                               np.array(first["phi"]), rtol=1e-4, atol=1e-5)
    sweep = torch.cartesian_prod(*[torch.linspace(*RANGE, 41)] * 2)
    with torch.no_grad():
        reached = example.layers[0](sweep)
    low, high = np.array(second["x"])[:, 0], np.array(second["x"])[:, -1]
    assert np.all(low <= reached.min(0).values.numpy() + 1e-5) and np.all(high >= reached.max(0).values.numpy() - 1e-5)
    assert np.all(high - low < 1.05 * (reached.max(0).values - reached.min(0).values).numpy() + 1e-3), "not wider"


def test_export_demo_leaves_the_models_as_they_were(exported, models):
    states = exported[2]
    for model, state in zip(models, states):
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert models[0].training and models[2].training, "still in training mode"
    assert torch.equal(models[2].samples(None, "test"), REMEMBERED), "the samples the example keeps"


BAD_CASES = ["digits_float widths", "digits_float quantized", "digits_quantized float",
             "digits_quantized without table", "digits_quantized classes", "example widths", "example deeper",
             "example family", "example not a model", "digits keys", "digits class", "digits pixels", "samples few",
             "samples many", "range order", "range infinite"]


def _bad_arguments(models, digits) -> dict:
    """case -> (the arguments changed, the error, a pattern of its message)."""
    digits_float, digits_quantized, example = models
    missing_seven = dict(digits, test_label=torch.where(digits["test_label"] == 7, 1, digits["test_label"]))
    return {
        "digits_float widths": (dict(digits_float=KAN([32, 3, 10], seed=0)), ValueError, "64 pixels to 10 classes"),
        "digits_float quantized": (dict(digits_float=digits_quantized), ValueError, "expected the float model"),
        "digits_quantized float": (dict(digits_quantized=digits_float), ValueError, "table_bits"),
        "digits_quantized without table": (dict(digits_quantized=quantize(digits_float, 8, calib=digits)),
                                           ValueError, "without a table"),
        "digits_quantized classes": (dict(digits_quantized=KAN([64, 3, 9], seed=0)), ValueError, "got 64 -> 9"),
        "example widths": (dict(example=KAN([2, 3, 2], seed=0)), ValueError, r"widths \[2, H, 1\]"),
        "example deeper": (dict(example=KAN([2, 3, 3, 1], seed=0)), ValueError, r"got \[2, 3, 3, 1\]"),
        "example family": (dict(example=KAN([2, 3, 1], layer=ChebyKAN, seed=0)), ValueError, "BSplineKAN"),
        "example not a model": (dict(example="kan"), TypeError, "KAN stack"),
        "digits keys": (dict(digits={"train_input": digits["train_input"]}), ValueError, "test_input, test_label"),
        "digits class": (dict(digits=missing_seven), ValueError, r"missing \[7\]"),
        "digits pixels": (dict(digits=dict(digits, test_input=digits["test_input"] * 16)), ValueError, r"\[0, 1\]"),
        "samples few": (dict(samples=9), ValueError, r"samples must be an int in 10\.\.360 \(an image per class"),
        "samples many": (dict(samples=10**6), ValueError, r"samples must be an int in 10\.\.360.*got 1000000"),
        "range order": (dict(example_range=(1.0, -1.0)), ValueError, "low < high"),
        "range infinite": (dict(example_range=(0.0, math.inf)), ValueError, "two finite numbers"),
    }


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_arguments_raise_naming_what_was_expected_before_writing_anything(case, models, digits, tmp_path):
    digits_float, digits_quantized, example = models
    cases = _bad_arguments(models, digits)
    assert sorted(cases) == sorted(BAD_CASES)
    change, error, message = cases[case]
    arguments = dict(digits_float=digits_float, digits_quantized=digits_quantized, example=example, digits=digits)
    arguments.update(change)
    folder = tmp_path / "out"
    with pytest.raises(error, match=message):
        export_demo(folder, **arguments)
    assert not folder.exists()


def test_a_folder_that_is_a_file_is_refused(models, digits, tmp_path):
    digits_float, digits_quantized, example = models
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputDirError, match="folder: expected a writable folder"):
        export_demo(tmp_path / "file", digits_float=digits_float, digits_quantized=digits_quantized,
                    example=example, digits=digits)


def test_the_build_names_the_command_that_makes_missing_demo_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"demo\.json.*python -m kanlib run notebooks/08_deploying"):
        demo_files(tmp_path)


# --- the page in a browser -----------------------------------------------------------------------------------

WAIT = "const done = arguments[arguments.length - 1];"


def call(browser, expression: str, *args):
    """Await the promise `expression` (JavaScript, with arguments[0..]) in the page; its value or an error."""
    result = browser.execute_async_script(
        f"{WAIT} Promise.resolve({expression}).then(v => done({{value: v}}), e => done({{error: String(e)}}))", *args)
    assert "error" not in result, result.get("error")
    return result["value"]


DRAW_LINE = """
const canvas = document.querySelector('.kanlib-demo-canvas');
const box = canvas.getBoundingClientRect();
const at = (u, v, type) => canvas.dispatchEvent(new PointerEvent(type, {pointerId: 7, isPrimary: true, bubbles: true,
    pointerType: 'mouse', buttons: type === 'pointerup' ? 0 : 1,
    clientX: box.left + u * box.width, clientY: box.top + v * box.height}));
at(0.52, 0.15, 'pointerdown');
for (let k = 1; k <= 10; k++) at(0.5, 0.15 + 0.07 * k, 'pointermove');
at(0.5, 0.85, 'pointerup');
"""


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def overflowing(browser) -> list[str]:
    """The demo's elements that reach past the right edge of the page's article column."""
    return browser.execute_script("""
        const right = document.querySelector('.bd-article').getBoundingClientRect().right;
        return Array.from(document.querySelectorAll('[data-kanlib-demo] *'))
            .filter(e => e.getBoundingClientRect().right > right + 1).map(e => e.className || e.tagName);""")


def test_the_site_serves_the_runtime_and_the_demo_files(site):
    for path in ort_files():
        assert (site / "_static" / ORT_STATIC / path.name).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (site / "_static" / ORT_STATIC).iterdir()) == sorted(ORT_FILES)
    for path in demo_files(DEMO_DIR):
        assert (site / "_static" / DEMO_STATIC / path.name).read_bytes() == path.read_bytes()
    assert (site / "book" / "demo.html").is_file()


def test_the_demo_page_runs_both_models_and_example_1_in_the_browser(site, browser, tmp_path):
    manifest = json.loads((site / "_static" / DEMO_STATIC / MANIFEST).read_text(encoding="utf-8"))
    sessions = {key: session(site / "_static" / DEMO_STATIC / name) for key, name in DEMO_FILES.items()}
    with serve(site) as url:
        errors = open_page(browser, f"{url}/book/demo.html")
        assert not errors, errors
        browser.set_script_timeout(60)
        assert call(browser, "window.kanlibDemo.ready") == {"ok": True}
        first = call(browser, "window.kanlibDemo.idle().then(() => window.kanlibDemo.last.digits)")
        assert first is not None, "a sample is classified on load"
        assert first["pixels"] == manifest["digits"]["samples"][0]["pixels"]

        # strokes drawn through pointer events: a vertical line, an 8x8 image of a centred bar, both models' answer
        browser.execute_script(DRAW_LINE)
        drawn = call(browser, "window.kanlibDemo.idle().then(() => window.kanlibDemo.last.digits)")
        image = np.array(drawn["pixels"]).reshape(8, 8)
        assert image.sum() > 0 and image[:, :2].sum() == 0 and image[:, 6:].sum() == 0, image
        assert np.all(image[:, 3:5].max(1) >= 0.5), "a bar from the top to the bottom"
        assert drawn["pixels"] == call(browser, "window.kanlibDemo.digitsInput()")
        for key in ("float", "int8"):
            probabilities = np.array(drawn[key]["probabilities"])
            assert probabilities.shape == (10,) and abs(probabilities.sum() - 1) < 1e-5
            assert drawn[key]["prediction"] == int(probabilities.argmax()) and drawn[key]["ms"] >= 0
        shown = browser.execute_script(
            "return Array.from(document.querySelectorAll('.kanlib-demo-prediction')).map(e => e.textContent)")
        assert shown == [str(drawn["float"]["prediction"]), str(drawn["int8"]["prediction"])]
        ort_drawn = sessions["float"].run(["output"], {"input": np.array([drawn["pixels"]], dtype=np.float32)})[0]
        np.testing.assert_allclose(drawn["float"]["probabilities"], softmax(ort_drawn)[0], atol=1e-4)

        # the manifest's samples: PyTorch's predictions, and ONNX Runtime's probabilities in Python
        for sample in manifest["digits"]["samples"]:
            result = call(browser, "window.kanlibDemo.classify(arguments[0])", sample["pixels"])
            pixels = np.array([sample["pixels"]], np.float32)
            for key in ("float", "int8"):
                assert result[key]["prediction"] == sample["prediction"][key], (key, sample["index"])
                expected = softmax(sessions[key].run(["output"], {"input": pixels})[0])
                np.testing.assert_allclose(result[key]["probabilities"], expected[0], atol=1e-4)

        # Example 1: moving a slider changes the output, which is ONNX Runtime's at the sliders' values
        before = call(browser, "window.kanlibDemo.idle().then(() => window.kanlibDemo.last.example1)")
        low, high = manifest["example1"]["range"]
        for name, value in (("x1", low + 0.9 * (high - low)), ("x2", low + 0.1 * (high - low))):
            browser.execute_script("const s = document.querySelector(`input[data-input='${arguments[0]}']`); "
                                   "s.value = arguments[1]; s.dispatchEvent(new Event('input', {bubbles: true}));",
                                   name, value)
        after = call(browser, "window.kanlibDemo.idle().then(() => window.kanlibDemo.last.example1)")
        assert after["output"] != before["output"]
        x = np.array([[after["x1"], after["x2"]]], dtype=np.float32)
        assert abs(after["x1"] - (low + 0.9 * (high - low))) <= (high - low) / 200
        output, edges_0, edges_1 = sessions["example1"].run(["output", "edges_0", "edges_1"], {"input": x})
        assert after["output"] == pytest.approx(float(output[0, 0]), rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(after["edges"][0], edges_0[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after["edges"][1], edges_1[0], rtol=1e-5, atol=1e-6)
        truth = math.exp(math.sin(math.pi * after["x1"]) + after["x2"] ** 2)
        assert after["truth"] == pytest.approx(truth)
        widths = manifest["example1"]["widths"]
        assert browser.execute_script("return document.querySelectorAll('.kanlib-demo-edge').length") == \
            widths[0] * widths[1] + widths[1] * widths[2]

        try:
            for width in (1280, 420):
                browser.set_window_size(width, 900)
                assert not overflowing(browser), f"at {width} px"
            browser.set_window_size(1280, 2400)
            browser.save_screenshot(str(tmp_path / "demo.png"))
        finally:
            browser.set_window_size(1280, 900)
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def test_without_its_models_the_page_says_so_in_place_of_the_panels(site, browser, tmp_path):
    """The site served with _static/demo/ left out (a copy of links to everything else)."""
    copy_root = tmp_path / "site"
    copy_root.mkdir()
    for entry in site.iterdir():
        if entry.name != "_static":
            (copy_root / entry.name).symlink_to(entry)
    (copy_root / "_static").mkdir()
    for entry in (site / "_static").iterdir():
        if entry.name != DEMO_STATIC:
            (copy_root / "_static" / entry.name).symlink_to(entry)
    with serve(copy_root) as url:
        errors = open_page(browser, f"{url}/book/demo.html")
        browser.set_script_timeout(60)
        ready = call(browser, "window.kanlibDemo.ready")
        assert ready["ok"] is False and "demo.json" in ready["message"]
        messages = browser.execute_script(
            "return Array.from(document.querySelectorAll('[data-kanlib-demo]')).map(p => p.textContent)")
        assert len(messages) == 2 and all("not part of this copy of the site" in text for text in messages)
        assert all("demo.json" in error["message"] for error in errors), "only the missing file is reported"
