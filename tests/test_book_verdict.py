"""The verdict on the landing page: the goals table from synthetic results and notebooks (met, missed, not
measured yet, modes labelled, a link per row), bad input named; the staged landing page built from the committed
notebooks; and, in a real browser, its table's rows and links."""
from __future__ import annotations

import pathlib
import re

import matplotlib
import nbformat
import pytest

matplotlib.use("Agg")

from conftest import broken_images, open_page, serve  # noqa: E402
from kanlib.bench import families, kernel, layer, load_results  # noqa: E402
from kanlib.book import verdict as V  # noqa: E402
from kanlib.book.notebook import results_dir  # noqa: E402
from kanlib.book.site import stage  # noqa: E402

LAYER_MS = {"dense": 10.0, "mlp": 2.0, "bsplinekan": 11.0, "unfused": 22.0}


def timing(prefix: str, median: float) -> dict:
    return {f"{prefix}median_ms": median, f"{prefix}q25_ms": 0.9 * median, f"{prefix}q75_ms": 1.1 * median}


def layer_run(device_type: str, kanlib_at_large: float) -> dict:
    """A layer run at G = 5 and 40: kanlib 1.1x dense at G = 5 and `kanlib_at_large` x at 40; unfused 2x kanlib."""
    rows = []
    for grid in (5, 40):
        times = dict(LAYER_MS)
        if grid == 40:
            times["bsplinekan"] = kanlib_at_large * times["dense"]
            times["unfused"] = 6.5 * times["bsplinekan"]
        for candidate, ms in times.items():
            rows.append({"grid": grid, "candidate": candidate, "dense_k": 8 * (grid + 4), **timing("fwdbwd_", ms),
                         "peak_bytes": 1000, "ratio_to_dense": ms / times["dense"]})
    name = "NVIDIA H200" if device_type == "cuda" else "Test CPU"
    return {"benchmark": "layer", "params": {"batch": 64, "width": 8}, "created_utc": "2026-05-01T00:00:00+00:00",
            "device": {"type": device_type, "name": name, "cpu_count": 2}, "git": {"commit": "a" * 40}, "rows": rows}


def quant_run(quick: bool, table8_speedup: float, symbolic_ratio: float) -> dict:
    common = {"kind": "accuracy", "method": "ptq", "granularity": "channel", "calibration": "minmax"}
    rows = [{**common, "task": "digits", "bits": 8, "table_bits": 3, "value": 96.1, "float_value": 96.4},
            {**common, "task": "symbolic", "bits": 8, "table_bits": 3, "value": symbolic_ratio * 1e-3,
             "float_value": 1e-3},
            {**common, "task": "digits", "bits": 8, "table_bits": 0, "size_ratio": 4.25},
            {**common, "task": "digits", "bits": 4, "table_bits": 0, "size_ratio": 7.75},
            {"kind": "inference", "candidate": "table8", **timing("", 1.0), "ratio_to_float": table8_speedup}]
    return {"benchmark": "quant", "params": {"quick": quick}, "created_utc": "2026-05-02T00:00:00+00:00",
            "device": {"type": "cpu", "name": "Test CPU", "cpu_count": 2}, "git": {"commit": "b" * 40}, "rows": rows}


def kernel_run(triton_ms: float) -> dict:
    base = dict(kernel.TARGET_CONFIGURATION)
    rows = [{**base, "candidate": "dense", **timing("fwdbwd_", 1.0)},
            {**base, "candidate": "triton", **timing("fwdbwd_", triton_ms), "peak_bytes": 110},
            {**base, "candidate": "unfused", **timing("fwdbwd_", 7.0)},
            {**base, "candidate": "mlp_params", "peak_bytes": 100}]
    return {"benchmark": "kernel", "params": {}, "created_utc": "2026-05-03T00:00:00+00:00",
            "device": {"type": "cuda", "name": "NVIDIA H200"}, "git": {"commit": "c" * 40}, "rows": rows}


def glue_output(key: str, value) -> dict:
    return nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": repr(value)},
                                  metadata={"scrapbook": {"name": key, "mime_prefix": "application/papermill.record/"}})


def notebook(headings: list[str], values: dict, mode: str | None = "quick") -> nbformat.NotebookNode:
    """A notebook as the runner leaves it: a stamp in `mode` (None: never executed), the headings, glued values."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\n" + "\n\n".join(f"## {h}" for h in headings))]
    cell = nbformat.v4.new_code_cell("glue(...)")
    cell.outputs = [glue_output(key, value) for key, value in values.items()]
    nb.cells.append(cell)
    if mode is not None:
        nb.metadata["kanlib"] = {"run": {"device": "cpu", "device_name": "Test CPU", "mode": mode,
                                         "date": "2026-05-04", "commit": "d" * 40, "dirty": False}}
    return nb


def notebooks(*, fast_path=1.7, params=3.1, time_to_target=1.4, digits=1.5, images=2.5, images_said="missed",
              quant_mode="full") -> dict[str, nbformat.NotebookNode]:
    return {
        "02_fast_path.ipynb": notebook(["The layers side by side"], {
            "fastpath_kanlib_over_dense_g5": fast_path, "fastpath_batch": 512, "fastpath_width": 64}),
        "03_kan_vs_mlp.ipynb": notebook(["The same RMSE: how big, how long", "Accuracy and time per epoch"], {
            "vsmlp_param_ratio": params, "vsmlp_time_ratio": time_to_target, "vsmlp_digits_epoch_ratio": digits},
            mode="full"),
        "04_triton_kernels.ipynb": notebook(["Against the dense product"], {}),
        "05_quantization.ipynb": notebook(["The goals"], {
            "quant_digits_loss_table3": 0.25, "quant_symbolic_ratio_table3": 50.5, "quant_size_ratio_8": 4.5,
            "quant_size_ratio_4": 8.5, "quant_table8_speedup": 0.07}, mode=quant_mode),
        "06_kans_on_images.ipynb": notebook(["What it means", "On a GPU", "Each family against the dense product"], {
            "images_bspline_time_ratio": images, "images_goal_ratio": 2.0, "images_target_met": images_said}),
        "90_findings.ipynb": notebook(["The layer against its floor", "Quantization"], {}),
    }


def by_name(goals: list[V.Goal]) -> dict[str, V.Goal]:
    found = {goal.name: goal for goal in goals}
    assert len(found) == len(goals), "every goal has its own name"
    return found


def images_goal(goals: list[V.Goal], gpu: bool = False) -> V.Goal:
    """The equal-accuracy goal of chapter 06 (CPU, from its glue) or of the images benchmark's GPU run."""
    name = "Epoch time at equal test accuracy, B-spline KAN / MLP" + (" (GPU)" if gpu else "")
    (goal,) = [goal for goal in goals if goal.name == name]
    return goal


def find(goals: list[V.Goal], *words: str) -> V.Goal:
    matching = [goal for goal in goals if all(word in goal.name for word in words)]
    assert len(matching) == 1, (words, [goal.name for goal in matching])
    return matching[0]


@pytest.fixture
def results():
    return [layer_run("cpu", 0.8), quant_run(quick=True, table8_speedup=1.25, symbolic_ratio=3.5)]


def test_goals_are_met_missed_or_not_measured_with_device_mode_and_section(results):
    goals = V.collect_goals(results, notebooks())
    by_name(goals)
    layer_small = find(goals, "dense product, G = 5 (CPU)")
    assert (layer_small.value, layer_small.status) == (pytest.approx(1.1), "met")
    assert layer_small.device == "Test CPU, 2 cores (cpu)" and layer_small.mode == "sizes B 64, I = O 8"
    assert find(goals, "dense product, G = 40 (CPU)").value == pytest.approx(0.8)
    assert find(goals, "Unfused", "G = 5 (CPU)").status == "missed"
    assert find(goals, "Unfused", "G = 40 (CPU)").status == "met"
    fast_path = find(goals, "chapter 02")
    assert fast_path.status == "missed" and fast_path.value_text == "1.7×"
    assert fast_path.mode == "quick (B 512, I = O 64)" and fast_path.device == "Test CPU (cpu)"
    for goal in (find(goals, "dense product (GPU)"), find(goals, "Unfused", "(GPU)"),
                 *(goal for goal in goals if goal.area == "The fused GPU kernel")):
        assert goal.status == "not measured yet" and goal.verdict == "not measured yet: needs a GPU run"
        assert goal.value is None and goal.value_text == "–"
    assert len([goal for goal in goals if goal.area == "The fused GPU kernel"]) == len(kernel.TARGETS)
    assert find(goals, "Parameters").status == "met" and find(goals, "Training time").status == "missed"
    assert find(goals, "Digits epoch time").status == "met" and images_goal(goals).status == "missed"
    assert images_goal(goals, gpu=True).verdict == "not measured yet: needs a GPU run"
    assert find(goals, "Symbolic", "chapter 05").status == "missed"
    assert find(goals, "speed", "chapter 05").value_text == "0.07×"
    assert find(goals, "speed", "benchmark").value == pytest.approx(1.25)
    assert find(goals, "Symbolic", "benchmark").value == pytest.approx(3.5)
    assert find(goals, "accuracy lost", "benchmark").value_text == "0.3 points"


def test_quick_and_full_runs_are_labelled_never_mixed(results):
    goals = V.collect_goals(results, notebooks(quant_mode="full"))
    frame = V.goals_frame(goals)
    assert list(frame.columns) == ["area", "goal", "measured", "target", "verdict", "device", "mode", "section", "link"]
    chapter, benchmark = frame[frame.goal.str.contains("chapter 05")], frame[frame.goal.str.contains("benchmark")]
    assert set(chapter["mode"]) == {"full"} and set(benchmark["mode"]) == {"quick"}
    chapter_06 = frame[(frame.area == "KANs on images") & ~frame.goal.str.endswith("(GPU)")]
    assert set(chapter_06["mode"]) == {"quick"}
    assert set(frame.loc[frame.goal.str.contains("Parameters"), "mode"]) == {"full"}


def test_every_goal_links_to_the_section_that_measures_it(results):
    goals = V.collect_goals(results, notebooks())
    for goal in goals:
        page, anchor = goal.href.split("#")
        assert page == f"../notebooks/{pathlib.Path(goal.notebook).stem}.html"
        assert anchor == V.section_anchor(goal.section) and re.fullmatch(r"[a-z0-9-]+", anchor)
    assert find(goals, "Parameters").href == "../notebooks/03_kan_vs_mlp.html#the-same-rmse-how-big-how-long"
    assert find(goals, "Symbolic", "benchmark").href == "../notebooks/90_findings.html#quantization"


def test_values_follow_the_inputs_none_is_typed_in(results):
    goals = V.collect_goals(results, notebooks())
    changed = V.collect_goals([layer_run("cpu", 1.9), quant_run(False, 0.5, 1.5)],
                              notebooks(fast_path=1.2, params=0.9, time_to_target=0.6, digits=2.7, images=1.4,
                                        images_said="met"))
    before, after = by_name(goals), by_name(changed)
    assert before.keys() == after.keys()
    flipped = {name for name in before if before[name].status != after[name].status}
    assert {find(goals, "chapter 02").name, find(goals, "Parameters").name, find(goals, "Training time").name,
            find(goals, "Digits epoch").name, images_goal(goals).name,
            find(goals, "dense product, G = 40").name, find(goals, "speed", "benchmark").name,
            find(goals, "Symbolic", "benchmark").name} <= flipped
    assert find(changed, "dense product, G = 40").value == pytest.approx(1.9)
    # and the committed values appear nowhere in the module's source (a value that lands on a goal's target reads as
    # that target, which the source names)
    source = pathlib.Path(V.__file__).read_text()
    committed = V.collect_goals(load_results(results_dir()), V.read_notebooks("notebooks"))
    targets = {f"{goal.target:.3g}" for goal in committed}
    for goal in committed:
        shown = f"{goal.value:.3g}" if goal.value is not None else ""
        if len(shown) >= 4 and shown not in targets:
            assert shown not in source, goal.name


def test_a_measured_gpu_kernel_is_checked(results):
    goals = V.collect_goals([*results, kernel_run(1.2)], notebooks())
    kernel_goals = [goal for goal in goals if goal.area == "The fused GPU kernel"]
    assert [goal.status for goal in kernel_goals] == ["met", "met", "met"]
    assert {goal.device for goal in kernel_goals} == {"NVIDIA H200 (cuda)"}
    slow = V.collect_goals([*results, kernel_run(1.6)], notebooks())
    assert next(goal for goal in slow if goal.area == "The fused GPU kernel").status == "missed"


def test_a_gpu_kernel_run_measured_one_process_per_grid_is_checked_at_its_target_grid(results):
    """The GPU run times the kernel in one process per grid size: the newest process (another grid) does not hide
    the target grid's rows measured by the same commit."""
    at_target = kernel_run(1.2)
    other_grid = kernel_run(9.0)
    other_grid["created_utc"] = "2026-05-04T00:00:00+00:00"
    other_grid["rows"] = [{**row, "grid": 50} for row in other_grid["rows"]]
    goals = V.collect_goals([*results, at_target, other_grid], notebooks())
    assert [goal.status for goal in goals if goal.area == "The fused GPU kernel"] == ["met", "met", "met"]
    other_grid["git"] = {"commit": "d" * 40}  # another commit's newer run: still the newest run at the target grid
    goals = V.collect_goals([*results, at_target, other_grid], notebooks())
    assert [goal.status for goal in goals if goal.area == "The fused GPU kernel"] == ["met", "met", "met"]
    alone = V.collect_goals([*results, other_grid], notebooks())
    kernel_goals = [goal for goal in alone if goal.area == "The fused GPU kernel"]
    assert [goal.status for goal in kernel_goals] == ["not measured yet"] * 3
    assert "lacks the target configuration" in kernel_goals[0].reason


def test_missing_or_unexecuted_notebooks_leave_their_goals_unmeasured(results):
    partial = notebooks()
    del partial["03_kan_vs_mlp.ipynb"]
    partial["06_kans_on_images.ipynb"] = notebook(["What it means", "On a GPU", "Each family against the dense product"], {},
                                                  mode=None)
    goals = V.collect_goals(results, partial)
    assert find(goals, "Parameters").verdict == "not measured yet: 03_kan_vs_mlp.ipynb is not in this build"
    assert (images_goal(goals).verdict
            == "not measured yet: 06_kans_on_images.ipynb was not executed by the runner")
    nan = notebooks(fast_path=float("nan"))
    assert find(V.collect_goals(results, nan), "chapter 02").status == "not measured yet"
    only_results = V.collect_goals([], {})
    assert all(goal.status == "not measured yet" for goal in only_results)


def test_bad_input_is_named(results, tmp_path):
    with pytest.raises(TypeError, match="expected a list of results"):
        V.collect_goals({"benchmark": "layer"}, notebooks())
    with pytest.raises(TypeError, match="expected a dict of file name -> notebook"):
        V.collect_goals(results, ["02_fast_path.ipynb"])
    with pytest.raises(TypeError, match=r"notebooks\['03_kan_vs_mlp.ipynb'\]: expected an nbformat notebook, got str"):
        V.collect_goals(results, {**notebooks(), "03_kan_vs_mlp.ipynb": "not a notebook"})
    lacking = notebooks()
    lacking["03_kan_vs_mlp.ipynb"].cells[1].outputs.pop(0)
    with pytest.raises(V.VerdictError, match="03_kan_vs_mlp.ipynb: glue key 'vsmlp_param_ratio': expected one of"):
        V.collect_goals(results, lacking)
    with pytest.raises(V.VerdictError, match="glue key 'vsmlp_param_ratio': expected a number, got 'many'"):
        V.collect_goals(results, notebooks(params="many"))
    renamed = notebooks()
    renamed["05_quantization.ipynb"] = notebook(["Goals"], {})
    with pytest.raises(V.VerdictError, match="05_quantization.ipynb: expected a section headed 'The goals', got"):
        V.collect_goals(results, renamed)
    with pytest.raises(V.VerdictError, match="its glued verdict images_target_met is 'met'"):
        V.collect_goals(results, notebooks(images=2.5, images_said="met"))
    page = tmp_path / "intro.md"
    page.write_text("# No marker\n")
    with pytest.raises(V.VerdictError, match="expected the marker '<!-- kanlib:verdict -->', found none"):
        V.write_verdict(page, tmp_path)


def table_rows(markdown: str) -> list[str]:
    """The goal rows of the verdict table (the area heading rows left out)."""
    return [line for line in markdown.splitlines() if line.startswith('<tr class="kanlib-goal">')]


def test_markdown_has_the_figure_a_reading_sentence_and_a_row_with_a_link_per_goal(results):
    goals = V.collect_goals(results, notebooks())
    markdown = V.verdict_markdown(goals)
    rows = table_rows(markdown)
    assert len(rows) == len(goals)
    for goal, row in zip(goals, rows):
        assert row.count("<a href=") == 1 and f'<a href="{goal.href}">' in row
        assert f"<td>{goal.mode}</td>" in row and f"<td>{goal.device}</td>" in row
    areas = [line for line in markdown.splitlines() if line.startswith('<tr class="kanlib-verdict-area">')]
    assert len(areas) == len(dict.fromkeys(goal.area for goal in goals))
    assert "\n\n" not in markdown[markdown.index("<table"):], "a blank line would end the HTML block"
    assert "```{figure} verdict.svg" in markdown and ":alt: Dot chart" in markdown
    assert "quick-mode run" in markdown and "full-mode run" in markdown
    counts = [sum(goal.status == status for goal in goals) for status in ("met", "missed", "not measured yet")]
    assert f"{counts[0]} are met, {counts[1]} missed and {counts[2]} not measured yet" in markdown
    assert "needs a GPU run" in V.figure_caption(goals)
    missed = [goal for goal in goals if goal.status == "missed"]
    assert all(goal.short in V.figure_alt(goals) for goal in missed)


def test_the_figure_shows_every_measured_goal_on_a_log_axis(results):
    goals = V.collect_goals(results, notebooks())
    figure = V.plot_verdict(goals)
    ax = figure.axes[0]
    measured = [goal for goal in goals if goal.status != "not measured yet"]
    assert ax.get_xscale() == "log" and len(ax.get_yticks()) == len(measured)
    labels = [label.get_text() for label in ax.get_yticklabels()]
    assert any("quick" in label for label in labels) and any("full" in label for label in labels)
    assert len(ax.lines) >= len(measured) + 1  # a dot each, and the goal line
    values = [label.get_text() for label in ax.child_axes[0].get_yticklabels()]  # the right-hand column
    assert values == [f"{goal.value_text} (goal {goal.goal_text})" for goal in measured]
    figure.draw_without_rendering()
    box = ax.get_window_extent()
    names, values = ax.get_yticklabels(), ax.child_axes[0].get_yticklabels()
    assert all(label.get_window_extent().x1 <= box.x0 for label in names)  # no text over the dots
    assert all(label.get_window_extent().x0 >= box.x1 for label in values)
    assert not ax.texts
    empty = V.plot_verdict(V.collect_goals([], {}))
    assert "No goal measured yet" in empty.axes[0].texts[0].get_text()


def test_staging_the_committed_notebooks_puts_the_verdict_on_the_landing_page(tmp_path):
    goals = V.collect_goals(load_results(results_dir()), V.read_notebooks("notebooks"))
    staged = stage("notebooks", tmp_path / "stage")
    intro = (staged / "book" / "intro.md").read_text()
    assert V.MARKER not in intro
    rows = table_rows(intro)
    assert len(rows) == len(goals) and all(row.count('<a href="../notebooks/') == 1 for row in rows)
    assert (staged / "book" / V.FIGURE_NAME).read_text().lstrip().startswith("<?xml")
    assert intro.index("```{figure} verdict.svg") < intro.index("## Why KANs")
    assert not re.search(r"\bthe issue\b|seed report", intro, re.IGNORECASE)


def test_the_landing_page_in_a_browser_has_a_row_and_a_working_link_per_goal(site, browser, tmp_path):
    goals = V.collect_goals(load_results(results_dir()), V.read_notebooks("notebooks"))
    with serve(site) as base:
        errors = open_page(browser, f"{base}/index.html", tmp_path / "index.png")
        assert errors == [], errors
        assert broken_images(browser) == []
        figure = browser.find_element("css selector", "#fig-verdict img")
        assert figure.get_attribute("alt").startswith("Dot chart")
        rows = browser.find_elements("css selector", "table.kanlib-verdict tbody tr.kanlib-goal")
        assert len(rows) == len(goals)
        hrefs = []
        for row in rows:
            links = row.find_elements("css selector", "a")
            assert len(links) == 1, row.text
            hrefs.append(links[0].get_attribute("href"))
        for href in dict.fromkeys(hrefs):
            page, anchor = href.split("#")
            assert open_page(browser, href) == []
            assert browser.execute_script("return document.getElementById(arguments[0]) !== null", anchor), href
    assert (tmp_path / "index.png").stat().st_size > 10_000


def sweep_run(at_200: float) -> dict:
    """A CPU layer run at the sweep's sizes: the layer 0.3x dense at G = 50, 1.1x at G = 5, `at_200` x its G = 50
    time at G = 200 and 1.2x at G = 100."""
    times = {(5, "dense"): 10.0, (5, "bsplinekan"): 11.0, (50, "dense"): 100.0, (50, "bsplinekan"): 30.0,
             (100, "dense"): 200.0, (100, "bsplinekan"): 36.0, (200, "dense"): 400.0, (200, "bsplinekan"): 30 * at_200}
    rows = [{**layer.TARGET_CONFIGURATION, "grid": grid, "candidate": candidate, **timing("fwdbwd_", ms),
             "peak_bytes": 1000, "ratio_to_dense": ms / times[grid, "dense"]} for (grid, candidate), ms in times.items()]
    return {"benchmark": "layer", "params": {"batch": 1024, "width": 256}, "created_utc": "2026-05-05T00:00:00+00:00",
            "device": {"type": "cpu", "name": "Test CPU", "cpu_count": 2}, "git": {"commit": "e" * 40}, "rows": rows}


def prune_run(layer_speedup: float) -> dict:
    rows = [{"kind": "layer", "sparsity": 0.9, "speedup": layer_speedup},
            {"kind": "model", "task": "digits", "sparsity": 0.9, "dense_value": 96.0, "value": 95.5,
             "compact_max_diff": 1e-7, "sparse_max_diff": 2e-7, "rounding_bound": 1e-6}]
    return {"benchmark": "prune", "params": {"quick": False}, "created_utc": "2026-05-06T00:00:00+00:00",
            "device": {"type": "cpu", "name": "Test CPU", "cpu_count": 2}, "git": {"commit": "f" * 40}, "rows": rows}


def test_the_sparsity_goals_come_from_the_sweep_pruning_and_thread_runs(results):
    assert {goal.status for goal in V.collect_goals(results, notebooks())
            if goal.area.startswith("Sparsity")} == {"not measured yet"}
    goals = V.collect_goals([*results, sweep_run(1.3), prune_run(4.5)], notebooks())
    assert find(goals, "G = 50 (local support, CPU)").value == pytest.approx(0.3)
    assert find(goals, "at G = 200 / at G = 50 (CPU)").status == "met"
    assert find(goals, "dense time / edge-sparse time").status == "met"
    assert find(goals, "accuracy lost at 90%").value_text == "0.5 points"
    assert find(goals, "busy process").verdict == "not measured yet: needs `python -m kanlib bench threads`"
    slower = V.collect_goals([*results, sweep_run(1.7), prune_run(3.0)], notebooks())
    assert find(slower, "at G = 200 / at G = 50 (CPU)").status == "missed"
    assert find(slower, "dense time / edge-sparse time").status == "missed"
    assert find(goals, "at G = 200", "(CPU)").href.endswith("09_pruning_and_sparsity.html#time-against-the-grid-size")


def families_run(ratio: float) -> dict:
    """A CPU families run: every family's kanlib layer `ratio` x its dense product, RBFKAN 0.9x fast-kan's."""
    rows = []
    for family in families.FAMILIES:
        for candidate, ms in (("dense", 10.0), ("kanlib", 10.0 * ratio), ("eager", 20.0)):
            rows.append({**families.TARGET_CONFIGURATION, "grid": 5, "family": family, "candidate": candidate,
                         **timing("fwdbwd_", ms)})
    rows.append({**families.TARGET_CONFIGURATION, "grid": 5, "family": "rbf", "candidate": "fastkan",
                 **timing("fwdbwd_", 10.0 * ratio / 0.9)})
    return {"benchmark": "families", "params": {"batch": 1024, "width": 256}, "created_utc": "2026-05-07T00:00:00+00:00",
            "device": {"type": "cpu", "name": "Test CPU", "cpu_count": 2}, "git": {"commit": "a" * 40}, "rows": rows}


def test_the_family_goals_come_from_the_newest_families_run(results):
    absent = [goal for goal in V.collect_goals(results, notebooks()) if "fast-kan" in goal.name or "ChebyKAN" in goal.name]
    assert len(absent) == 2 and {goal.verdict for goal in absent} == {
        "not measured yet: needs `python -m kanlib bench families`"}
    goals = V.collect_goals([*results, families_run(1.2)], notebooks())
    cheby = find(goals, "ChebyKAN layer's training step")
    assert (cheby.value, cheby.status, cheby.area) == (pytest.approx(1.2), "met",
                                                 "The other KAN families against the dense product")
    assert cheby.href.endswith("06_kans_on_images.html#each-family-against-the-dense-product")
    assert find(goals, "fast-kan's").value == pytest.approx(0.9)
    slower = V.collect_goals([*results, families_run(1.4)], notebooks())
    assert {goal.status for goal in slower if "dense product of its K" in goal.name} == {"missed"}


def test_the_gpu_equal_accuracy_goal_comes_from_the_images_benchmarks_cuda_run(results):
    from kanlib.bench import images

    runs = [{"kind": "run", "family": family, "width": 8, "seed": 0, "parameters": 10, "epoch_seconds": seconds,
             "test_accuracy": 0.9} for family, seconds in (("mlp", 1.0), ("bspline", 1.4))]
    rows = images.equal_accuracy(runs, dataset="digits", tolerance=0.005, device_type="cuda")
    run = {"benchmark": "images", "params": {"quick": False}, "created_utc": "2026-05-04T00:00:00+00:00",
           "device": {"type": "cuda", "name": "NVIDIA H200"}, "git": {"commit": "d" * 40}, "rows": rows}
    goal = images_goal(V.collect_goals([*results, run], notebooks()), gpu=True)
    assert (goal.value, goal.status, goal.mode) == (pytest.approx(1.4), "met", "full, digits")
    assert goal.notebook == "06_kans_on_images.ipynb" and goal.section == "On a GPU"


def test_the_grid_sweep_goals_on_a_gpu_join_one_commits_runs_of_one_grid_each(results):
    from kanlib.bench import layer

    def one_grid(grid, kanlib_ms, minute):
        rows = [{**layer.TARGET_CONFIGURATION, "grid": grid, "candidate": candidate, **timing("fwdbwd_", ms)}
                for candidate, ms in (("dense", 1.0 * grid / 50), ("bsplinekan", kanlib_ms))]
        return {"benchmark": "layer", "params": {"batch": 1024, "width": 256, "grids": [grid]},
                "created_utc": f"2026-05-02T00:{minute:02d}:00+00:00",
                "device": {"type": "cuda", "name": "NVIDIA H200"}, "git": {"commit": "e" * 40}, "rows": rows}

    sweep = [one_grid(5, 0.3, 1), one_grid(50, 2.8, 2), one_grid(100, 2.8, 3), one_grid(200, 3.1, 4)]
    goals = V.collect_goals([*results, *sweep], notebooks())
    gpu = {goal.short: goal for goal in goals if goal.area.startswith("Sparsity") and goal.short.endswith("(GPU)")}
    assert gpu["G = 100 / G = 50 (GPU)"].value == pytest.approx(1.0)
    assert gpu["G = 200 / G = 50 (GPU)"].value == pytest.approx(3.1 / 2.8)
    assert gpu["layer / dense, G = 50 (GPU)"].value == pytest.approx(2.8) and gpu["layer / dense, G = 50 (GPU)"].status \
        == "missed"
    assert gpu["layer / dense, G = 5 (sweep) (GPU)"].value == pytest.approx(3.0)
    assert all(goal.device == "NVIDIA H200 (cuda)" for goal in gpu.values())


def test_the_table_names_each_section_by_its_chapter_title(results):
    chapters = notebooks()
    chapters["02_fast_path.ipynb"].cells[0].source = ("```python\n# a comment, not a heading\n```\n\n"
                                                      "# Why KANs are slow\n\n## The layers side by side")
    titles = V.chapter_titles(chapters)
    assert titles["02_fast_path.ipynb"] == "Why KANs are slow" and titles["03_kan_vs_mlp.ipynb"] == "Title"
    goals = V.collect_goals(results, chapters)
    rows = table_rows(V.verdict_markdown(goals, titles=titles))
    fast_path = [row for goal, row in zip(goals, rows) if goal.notebook == "02_fast_path.ipynb"]
    assert fast_path and all("Why KANs are slow › The layers side by side</a>" in row for row in fast_path)
    untitled = table_rows(V.verdict_markdown(goals))  # without titles, the notebook's file name
    assert any("02_fast_path › The layers side by side</a>" in row for row in untitled)
    with pytest.raises(TypeError, match="expected a dict of file name -> notebook"):
        V.chapter_titles(["02_fast_path.ipynb"])
