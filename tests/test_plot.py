"""kanlib.plot: the network picture (pykan's plot) and one edge's plot, checked against pykan's scores."""
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from kanlib import KAN  # noqa: E402
from kanlib.plot import COLORS, PRUNED_ALPHA, plot_activation, plot_model  # noqa: E402

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-"}


@pytest.fixture
def close_figures():
    figures = []
    yield figures
    for figure in figures:
        plt.close(figure)


def trained_like(widths, seed=0, n=64):
    """A KAN with random (not flat) functions and samples reaching beyond its [-1, 1] grid."""
    model = KAN(widths, seed=seed, noise_scale=1.0)
    generator = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(n, widths[0], generator=generator) * 3 - 1.5
    return model, x


def main_axes(figure):
    return figure.axes[0]


def insets(figure):
    return {inset.get_label(): inset for inset in main_axes(figure).child_axes}


def edge_lines(figure):
    """{'edge l,i,j': [line into the edge's plot, line out of it]}."""
    lines = {}
    for line in main_axes(figure).lines:
        if (line.get_gid() or "").startswith("edge "):
            lines.setdefault(line.get_gid(), []).append(line)
    return lines


def all_edges(widths):
    return [(l, i, j) for l in range(len(widths) - 1) for i in range(widths[l]) for j in range(widths[l + 1])]


@pytest.mark.parametrize("widths", [[2, 5, 1], [4, 3, 2, 1], [3, 2]])
def test_one_plot_per_edge_with_the_edge_function_against_sorted_samples(widths, close_figures):
    model, x = trained_like(widths)
    figure = plot_model(model, x)
    close_figures.append(figure)
    plots, lines = insets(figure), edge_lines(figure)
    expected = {f"edge {l},{i},{j}" for l, i, j in all_edges(widths)}
    assert set(plots) == expected and set(lines) == expected
    assert all(len(pair) == 2 for pair in lines.values())
    layer_inputs = model.layer_inputs(x)
    for l, i, j in all_edges(widths):
        (curve,) = plots[f"edge {l},{i},{j}"].lines
        inputs = layer_inputs[l].detach()
        order = torch.argsort(inputs[:, i])
        phi = model.layers[l].activations(inputs).detach()[order, i, j]
        np.testing.assert_allclose(curve.get_xdata(), inputs[order, i].double().numpy(), rtol=1e-6)
        np.testing.assert_allclose(curve.get_ydata(), phi.double().numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("widths", [[2, 5, 1], [4, 3, 2, 1], [5, 10, 1]])
def test_edge_plots_do_not_overlap_and_stay_inside_the_figure(widths, close_figures):
    model, x = trained_like(widths)
    figure = plot_model(model, x, in_vars=[f"$x_{k}$" for k in range(widths[0])], out_vars=["$y$"] * widths[-1],
                        title="a title")
    close_figures.append(figure)
    figure.draw_without_rendering()
    boxes = [inset.get_window_extent() for inset in main_axes(figure).child_axes]
    assert len(boxes) == len(all_edges(widths))
    whole = figure.bbox
    for index, box in enumerate(boxes):
        assert box.width > 0 and box.height > 0
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1
        for other in boxes[index + 1:]:
            overlap_x = min(box.x1, other.x1) - max(box.x0, other.x0)
            overlap_y = min(box.y1, other.y1) - max(box.y0, other.y0)
            assert overlap_x <= 0 or overlap_y <= 0, f"edge plots overlap: {box} and {other}"


@pytest.mark.parametrize("metric", ["backward", "forward_u", "forward_n"])
def test_opacity_is_tanh_of_beta_times_pykans_score(metric, close_figures):
    widths, beta = [3, 4, 2], 2.5
    model, x = trained_like(widths, seed=3)
    reference = model.to_pykan()
    reference(x)
    if metric == "backward":
        reference.attribute(plot=False)
        scores = reference.edge_scores
    else:
        scores = reference.edge_actscale if metric == "forward_u" else reference.acts_scale
    scores = [score.detach() for score in scores]
    figure = plot_model(model, x, beta=beta, metric=metric)
    close_figures.append(figure)
    lines, plots = edge_lines(figure), insets(figure)
    drawn, expected = [], []
    for l, i, j in all_edges(widths):
        alpha = math.tanh(beta * float(scores[l][j, i]))
        label = f"edge {l},{i},{j}"
        assert [line.get_alpha() for line in lines[label]] == pytest.approx([alpha, alpha], abs=1e-5)
        assert plots[label].lines[0].get_alpha() == pytest.approx(alpha, abs=1e-5)
        drawn.append(lines[label][0].get_alpha())
        expected.append(float(scores[l][j, i]))
    # the stronger the edge, the darker and wider its line
    by_score = np.argsort(expected, kind="stable")
    assert np.all(np.diff(np.asarray(drawn)[by_score]) >= -1e-12)
    widths_drawn = [lines[f"edge {l},{i},{j}"][0].get_linewidth() for l, i, j in all_edges(widths)]
    assert np.all(np.diff(np.asarray(widths_drawn)[by_score]) >= -1e-12)
    assert max(drawn) > 0.2 and max(drawn) - min(drawn) > 0.1  # the check has something to order


def test_pruned_edges_are_faded_dashed_and_empty(close_figures):
    model, x = trained_like([2, 3, 1], seed=1)
    model.remove_edge(0, 1, 2)
    pruned = model.prune_edge(threshold=0.0, x=x)  # a copy; nothing else scores 0
    pruned.remove_edge(1, 0, 0)
    figure = plot_model(pruned, x, beta=50.0)
    close_figures.append(figure)
    lines, plots = edge_lines(figure), insets(figure)
    for label in ("edge 0,1,2", "edge 1,0,0"):
        assert all(line.get_alpha() == PRUNED_ALPHA and line.get_linestyle() == "--" for line in lines[label])
        assert len(plots[label].lines) == 0
    # hidden node 0 lost its only way out, so the edges into it score 0; beta 50 makes the others nearly opaque
    dead = {"edge 0,1,2", "edge 1,0,0", "edge 0,0,0", "edge 0,1,0"}
    live = [pair[0].get_alpha() for label, pair in lines.items() if label not in dead]
    assert PRUNED_ALPHA < 0.2 and len(live) == 5 and min(live) > 0.5
    assert all(line.get_linestyle() == "-" for label in dead - {"edge 0,1,2", "edge 1,0,0"} for line in lines[label])


def test_symbolic_edges_are_coloured_named_and_show_their_function(close_figures):
    model, x = trained_like([2, 3, 1], seed=2)
    model(x)
    model.fix_symbolic(0, 1, 2, "sin", fit_params=False)
    model.fix_symbolic(1, 0, 0, "x^2", fit_params=False)
    figure = model.plot()
    close_figures.append(figure)
    lines, plots = edge_lines(figure), insets(figure)
    names = {text.get_gid(): text.get_text() for text in main_axes(figure).texts if text.get_gid()}
    assert names == {"name 0,1,2": "sin", "name 1,0,0": "x^2"}
    for label in ("edge 0,1,2", "edge 1,0,0"):
        assert all(line.get_color() == COLORS["symbolic"] for line in lines[label])
        assert plots[label].lines[0].get_color() == COLORS["symbolic"]
    assert all(line.get_color() == COLORS["spline"] for line in lines["edge 0,0,0"])
    curve = plots["edge 0,1,2"].lines[0]
    np.testing.assert_allclose(curve.get_ydata(), np.sin(curve.get_xdata()), rtol=1e-5, atol=1e-6)
    hidden = plots["edge 1,0,0"].lines[0]
    np.testing.assert_allclose(hidden.get_ydata(), hidden.get_xdata() ** 2, rtol=1e-5, atol=1e-6)


def test_variable_names_and_title_are_written(close_figures):
    model, x = trained_like([2, 3, 1])
    figure = plot_model(model, x, in_vars=[r"$\alpha$", "$x_2$"], out_vars=["$y$"], title="the model")
    close_figures.append(figure)
    texts = [text.get_text() for text in main_axes(figure).texts]
    assert {r"$\alpha$", "$x_2$", "$y$", "the model"} <= set(texts)


def test_the_model_methods_use_the_last_input(close_figures):
    model, x = trained_like([2, 3, 1])
    model(x)
    figures = [model.plot(metric="forward_u"), plot_model(model, x, metric="forward_u"),
               model.plot_activation(0, 1, 2), plot_activation(model, 0, 1, 2, x)]
    close_figures.extend(figures)
    first, second = insets(figures[0]), insets(figures[1])
    for label in first:
        np.testing.assert_array_equal(first[label].lines[0].get_ydata(), second[label].lines[0].get_ydata())
    np.testing.assert_array_equal(figures[2].axes[0].collections[0].get_offsets(),
                                  figures[3].axes[0].collections[0].get_offsets())


def test_an_edge_plot_shows_its_function_over_the_input_range_and_the_samples(close_figures):
    model, x = trained_like([2, 3, 2], seed=4)
    l, i, j = 1, 2, 1
    figure = plot_activation(model, l, i, j, x)
    close_figures.append(figure)
    (ax,) = figure.axes
    (line,) = [line for line in ax.lines if line.get_gid() == "function"]
    inputs = model.layer_inputs(x)[l].detach()
    layer = model.layers[l]
    grid_low, grid_high = float(layer.grid[i, layer.spline_order]), float(layer.grid[i, -layer.spline_order - 1])
    xs = line.get_xdata()
    assert xs[0] == pytest.approx(min(float(inputs[:, i].min()), grid_low))
    assert xs[-1] == pytest.approx(max(float(inputs[:, i].max()), grid_high))
    dense = torch.as_tensor(xs, dtype=torch.float32).unsqueeze(-1).repeat(1, layer.in_features)
    np.testing.assert_allclose(line.get_ydata(), layer.activations(dense).detach()[:, i, j].numpy(), rtol=1e-5,
                               atol=1e-7)
    points = ax.collections[0].get_offsets()
    expected = torch.stack([inputs[:, i], layer.activations(inputs).detach()[:, i, j]], 1).double().numpy()
    np.testing.assert_allclose(points, expected, rtol=1e-6)
    assert "(1, 2, 1)" in ax.get_title()
    assert ax.get_xlabel() and ax.get_ylabel()


def test_an_edge_plot_names_its_symbolic_form(close_figures):
    model, x = trained_like([2, 3, 1], seed=5)
    model(x)
    model.layers[0].set_symbolic(1, 0, "sin", (2.0, 0.5, 1.5, -0.25))
    figure = model.plot_activation(0, 1, 0)
    close_figures.append(figure)
    (ax,) = figure.axes
    title = ax.get_title()
    assert "(0, 1, 0)" in title and r"\sin" in title and "1.5" in title and "0.25" in title
    (line,) = [line for line in ax.lines if line.get_gid() == "function"]
    np.testing.assert_allclose(line.get_ydata(), 1.5 * np.sin(2 * line.get_xdata() + 0.5) - 0.25, rtol=1e-5,
                               atol=1e-6)
    figure.draw_without_rendering()  # the title's mathtext typesets


def test_figures_are_not_left_open_in_pyplot(close_figures):
    """Jupyter shows a returned figure; one pyplot also kept would be shown a second time."""
    model, x = trained_like([2, 3, 1])
    close_figures.extend([plot_model(model, x), plot_activation(model, 0, 0, 0, x)])
    assert plt.get_fignums() == []


def test_other_layer_families_plot_with_the_forward_metrics(close_figures):
    model = KAN([2, 3, 1], layer="rbf", seed=0)
    x = torch.rand(32, 2) * 2 - 1
    figure = plot_model(model, x, metric="forward_u")
    close_figures.append(figure)
    assert len(insets(figure)) == 9
    with pytest.raises(TypeError, match="needs BSplineKAN layers"):
        plot_model(model, x)


def test_drawing_on_a_given_axes(close_figures):
    model, x = trained_like([2, 3, 1])
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    close_figures.append(figure)
    assert plot_model(model, x, ax=left) is figure
    assert plot_activation(model, 0, 0, 0, x, ax=right) is figure
    assert len(left.child_axes) == 9 and len(right.lines) == 1


@pytest.mark.parametrize("extension", ["png", "svg", "pdf"])
def test_saving_writes_a_file_of_that_format(extension, tmp_path, close_figures):
    model, x = trained_like([2, 3, 1])
    for name, draw in (("model", lambda path: plot_model(model, x, path=path)),
                       ("edge", lambda path: plot_activation(model, 0, 1, 0, x, path=path))):
        path = tmp_path / f"{name}.{extension.upper() if name == 'edge' else extension}"
        close_figures.append(draw(path))
        data = path.read_bytes()
        if extension == "svg":
            assert b"<svg" in data[:2000]
        else:
            assert data.startswith(MAGIC[extension])
        assert len(data) > 1000


def test_bad_arguments_get_clear_errors(tmp_path, close_figures):
    model, x = trained_like([2, 3, 1])
    with pytest.raises(ValueError, match=r"\.png.*got '.*\.jpg'"):
        plot_model(model, x, path=tmp_path / "figure.jpg")
    with pytest.raises(ValueError, match="does not exist"):
        plot_model(model, x, path=tmp_path / "missing" / "figure.png")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"l must be a layer index in 0\.\.1.*got 2"):
        plot_activation(model, 2, 0, 0, x)
    with pytest.raises(ValueError, match=r"i must be an input index of layer 1 in 0\.\.2, got 3"):
        plot_activation(model, 1, 3, 0, x)
    with pytest.raises(ValueError, match=r"j must be an output index of layer 0 in 0\.\.2, got -1"):
        plot_activation(model, 0, 0, -1, x)
    with pytest.raises(TypeError, match="i must be"):
        plot_activation(model, 0, 0.5, 0, x)
    with pytest.raises(ValueError, match="metric must be one of"):
        plot_model(model, x, metric="l1")
    with pytest.raises(ValueError, match="in_vars must be a sequence of 2 names"):
        plot_model(model, x, in_vars=["a"])
    with pytest.raises(ValueError, match=r"samples of shape \[N, 2\], got \(5, 3\)"):
        plot_model(model, torch.rand(5, 3))
    for function in (plot_model, lambda m, x: plot_activation(m, 0, 0, 0, x)):
        with pytest.raises(TypeError, match="expects a kanlib.KAN.*got Linear"):
            function(torch.nn.Linear(2, 1), x)
    assert plt.get_fignums() == []


def test_without_samples_the_error_says_how_to_give_them():
    model, _ = trained_like([2, 3, 1])
    with pytest.raises(ValueError, match=r"KAN.plot needs samples: pass x=\[N, 2\] or call model\(x\) first"):
        model.plot()
    with pytest.raises(ValueError, match=r"KAN.plot_activation needs samples"):
        model.plot_activation(0, 0, 0)
