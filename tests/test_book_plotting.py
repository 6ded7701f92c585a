"""The notebooks' shared figures: what they draw, their labels, and errors on bad input."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from kanlib import KAN, BSplineKAN, History  # noqa: E402
from kanlib.book.plotting import (  # noqa: E402
    fit_power_law, history_frame, label_log_axis, plot_activations, plot_history, plot_rows, plot_scaling,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _rows():
    return [{"grid": g, "candidate": c, "t_median_ms": m * g, "t_q25_ms": m * g * 0.9, "t_q75_ms": m * g * 1.1}
            for g in (3, 5, 10) for c, m in (("dense", 1.0), ("kan", 2.0))]


def _history(steps, train, test):
    return History(metric_name="rmse", step=list(steps), train_loss=list(train), test_loss=list(test),
                   train_metric=list(train), test_metric=list(test))


def test_plot_rows_draws_a_line_and_a_band_per_hue_level():
    ax = plot_rows(_rows(), x="grid", y="t_median_ms", hue="candidate", band=("t_q25_ms", "t_q75_ms"),
                   ylabel="time (ms)", title="timings")
    lines = [line for line in ax.lines if len(line.get_xdata()) == 3]
    assert len(lines) == 2
    assert np.allclose(sorted(lines[1].get_ydata()), [6.0, 10.0, 20.0])
    assert len(ax.collections) == 2, "one shaded quartile band per candidate"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("grid", "time (ms)", "timings")
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"


def test_plot_rows_accepts_a_frame_and_keeps_only_the_hue_order_levels():
    ax = plot_rows(pd.DataFrame(_rows()), x="grid", y="t_median_ms", hue="candidate", hue_order=["kan"],
                   logy=False)
    assert len([line for line in ax.lines if len(line.get_xdata()) == 3]) == 1
    assert ax.get_title() == "t_median_ms against grid"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"y": "nope"}, KeyError, "nope"),
    ({"band": ("t_q25_ms",)}, ValueError, "two column names"),
    ({"hue_order": ["mlp"]}, ValueError, "mlp"),
])
def test_plot_rows_names_what_is_wrong(kwargs, error, match):
    arguments = {"x": "grid", "y": "t_median_ms", "hue": "candidate", **kwargs}
    with pytest.raises(error, match=match):
        plot_rows(_rows(), **arguments)


def test_plot_rows_rejects_empty_and_non_row_input():
    with pytest.raises(ValueError, match="at least one row"):
        plot_rows([], x="grid", y="t")
    with pytest.raises(TypeError, match="list of dicts"):
        plot_rows("rows", x="grid", y="t")


def test_history_frame_shifts_each_stage_by_the_steps_before_it():
    first, second = _history([0, 5, 10], [3, 2, 1], [4, 3, 2]), _history([0, 4], [0.9, 0.5], [1.5, 1.0])
    frame = history_frame([first, second], labels=["G=3", "G=10"])
    train = frame[frame.split == "train"]
    assert train.step.tolist() == [0, 5, 10, 10, 14]
    assert train.value.tolist() == [3, 2, 1, 0.9, 0.5]
    assert train.stage.tolist() == ["G=3"] * 3 + ["G=10"] * 2
    assert set(frame.metric) == {"rmse"}
    assert history_frame(first).stage.unique().tolist() == ["stage 0"]


def test_history_frame_checks_its_input():
    with pytest.raises(ValueError, match="one per history"):
        history_frame([_history([0, 1], [1, 1], [1, 1])], labels=["a", "b"])
    with pytest.raises(TypeError, match="History"):
        history_frame([{"step": [0]}])
    with pytest.raises(ValueError, match="non-empty"):
        history_frame([])


def test_plot_history_marks_every_stage_boundary():
    stages = [_history([0, 5, 10], [3, 2, 1], [4, 3, 2]), _history([0, 4], [0.9, 0.5], [1.5, 1.0]),
              _history([0, 6], [0.4, 0.2], [0.8, 0.6])]
    ax = plot_history(stages, labels=["G=3", "G=10", "G=20"], title="refinement")
    boundaries = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
    assert boundaries == [10, 14]
    assert [text.get_text() for text in ax.texts] == ["G=10", "G=20"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("optimizer step", "rmse", "refinement")


def test_plot_activations_draws_every_edge_of_every_layer():
    model = KAN([2, 3, 1], seed=0)
    x = torch.rand(50, 2) * 2 - 1
    fig = plot_activations(model, x)
    axes = fig.axes
    visible = [ax for ax in axes if ax.axison]
    assert len(visible) == 2 + 3, "one panel per input node of each layer"
    lines = sum(len(ax.lines) for ax in visible)
    assert lines == 2 * 3 + 3 * 1, "one line per edge"
    first = visible[0].lines[0]
    expected = model.layers[0].activations(x)[:, 0, 0].detach()
    order = torch.argsort(x[:, 0])
    assert np.allclose(first.get_ydata(), expected[order].numpy(), atol=1e-6)
    assert all(ax.get_xlabel() and ax.get_ylabel() and ax.get_title() for ax in visible)
    assert fig._suptitle.get_text() == "learned activations of each layer"


def test_plot_activations_takes_one_layer_and_rejects_other_modules():
    fig = plot_activations(BSplineKAN(1, 2), torch.linspace(-1, 1, 20)[:, None], title="one layer")
    assert len(fig.axes[0].lines) == 2
    with pytest.raises(TypeError, match="activations"):
        plot_activations(torch.nn.Linear(2, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="N, in_features"):
        plot_activations(BSplineKAN(1, 1), torch.zeros(4))


def test_fit_power_law_recovers_an_exact_power_law():
    n = np.array([10.0, 100.0, 1000.0])
    exponent, prefactor = fit_power_law(n, 3.0 * n**-4)
    assert exponent == pytest.approx(-4.0)
    assert prefactor == pytest.approx(3.0)


@pytest.mark.parametrize("x, y, match", [
    ([1.0], [1.0], "length >= 2"),
    ([1.0, 2.0], [1.0, 0.0], "positive"),
    ([2.0, 2.0], [1.0, 3.0], "distinct"),
])
def test_fit_power_law_rejects_what_it_cannot_fit(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y)


def test_plot_scaling_fits_the_chosen_points_and_draws_the_reference():
    n = np.array([100.0, 200.0, 400.0, 800.0])
    errors = 5.0 * n**-2
    errors[-1] = errors[-2] * 2  # past the interpolation threshold
    ax, exponent = plot_scaling(n, errors, fit_until=3, reference_exponent=-4)
    assert exponent == pytest.approx(-2.0)
    reference = next(line for line in ax.lines if line.get_linestyle() == "--")
    assert reference.get_ydata()[0] == pytest.approx(errors[0])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_xlabel() == "parameters" and ax.get_ylabel() == "test RMSE" and ax.get_title()


def test_plot_rows_style_gives_a_line_and_a_band_per_hue_and_style_pair():
    rows = [{**row, "batch": batch} for row in _rows() for batch in (256, 1024)]
    ax = plot_rows(rows, x="grid", y="t_median_ms", hue="candidate", style="batch", band=("t_q25_ms", "t_q75_ms"))
    assert len([line for line in ax.lines if len(line.get_xdata()) == 3]) == 4
    assert len(ax.collections) == 4
    with pytest.raises(KeyError, match="width"):
        plot_rows(rows, x="grid", y="t_median_ms", style="width")


def test_a_log_axis_spanning_about_a_decade_is_labelled_at_one_two_and_five_in_plain_digits():
    fig, ax = plt.subplots()
    ax.plot([0.0035, 0.08], [0, 1])
    ax.set_xscale("log")
    label_log_axis(ax.xaxis)
    fig.canvas.draw()

    def shown_labels():
        low, high = ax.get_xlim()
        ticks = [*ax.xaxis.get_major_ticks(), *ax.xaxis.get_minor_ticks()]
        return {tick.label1.get_text() for tick in ticks
                if low <= tick.get_loc() <= high and tick.label1.get_visible() and tick.label1.get_text()}

    assert sorted(shown_labels(), key=float) == ["0.005", "0.01", "0.02", "0.05"]
    # matplotlib's own labels there: 2, 3, 4 and 6 times each power of ten, 3x10^-2 beside 4x10^-2
    ax.xaxis.set_major_formatter(matplotlib.ticker.LogFormatterSciNotation())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.LogFormatterSciNotation(labelOnlyBase=False,
                                                                             minor_thresholds=(1, 0.4)))
    fig.canvas.draw()
    assert len(shown_labels()) > 4
