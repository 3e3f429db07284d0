"""The figures of ``refimpl explain --plot`` and ``refimpl steps --plot`` (the plot code of
``refimpl/cli/explain.py``, ``refimpl/cli/steps.py`` and ``refimpl/cli/_cases.py``): the case
in the title, one colour scale for the heat maps that are compared, one y axis for the per-step
bars, a tick at every position of a small kernel, every label inside its frame.

Each figure is drawn once per module (matplotlib costs a fraction of a second per figure) and
inspected before it is written.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the figures need matplotlib (the plot extra)")

from matplotlib.image import AxesImage  # noqa: E402

from refimpl.cli import explain, steps  # noqa: E402
from refimpl.cli._cases import pyplot  # noqa: E402
from refimpl.study import default_steps, random_direction, study_steps  # noqa: E402
from refimpl.testing.cases import get_case  # noqa: E402


def _figure(monkeypatch, module, plot, *args):
    """The figure ``plot(*args, path)`` makes, taken where the module would save it, drawn
    (so that every text has its place)."""
    kept = []
    monkeypatch.setattr(module, "save_figure", lambda figure, plt, path: kept.append(figure))
    plot(*args, "unused.png")
    figure, = kept
    figure.draw_without_rendering()
    return figure


@pytest.fixture(scope="module")
def figures():
    """explain shared-cnn-kernel (heat maps), explain sequence-rnn-classifier (per-step bars),
    steps mlp-tanh-ce (one step per decade)."""
    made = {}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in ("shared-cnn-kernel", "sequence-rnn-classifier"):
            found = explain.case_contributions(get_case(name))
            made[name] = _figure(monkeypatch, explain, explain.plot_explanation, name, found)
        case = get_case("mlp-tanh-ce")
        _, gradient = case.loss_and_grads(case.params)
        study = study_steps(lambda p: case.loss_and_grads(p)[0], case.params, gradient,
                            random_direction(case.params, 0), default_steps(per_decade=1))
        made["steps"] = _figure(monkeypatch, steps, steps.plot_steps, "mlp-tanh-ce",
                                "random unit direction (seed 0)", study)
    yield made
    plt = pyplot()
    for figure in made.values():
        plt.close(figure)


def _inside(inner, outer, slack=1.0):
    return (inner.x0 >= outer.x0 - slack and inner.x1 <= outer.x1 + slack
            and inner.y0 >= outer.y0 - slack and inner.y1 <= outer.y1 + slack)


@pytest.mark.parametrize("key, title", [
    ("shared-cnn-kernel", "refimpl explain shared-cnn-kernel"),
    ("sequence-rnn-classifier", "refimpl explain sequence-rnn-classifier"),
    ("steps", "refimpl steps mlp-tanh-ce: random unit direction (seed 0)")])
def test_the_case_is_in_the_figure_title(figures, key, title):
    assert figures[key].get_suptitle().startswith(title)


def test_compared_heat_maps_share_one_colour_scale_and_one_colour_bar(figures):
    figure = figures["shared-cnn-kernel"]
    images = [artist for axis in figure.axes for artist in axis.get_images()
              if isinstance(artist, AxesImage)]
    assert len(images) == 4        # two uses of the kernel, two of the bias
    top = max(float(np.max(image.get_array())) for image in images)
    assert {image.get_clim() for image in images} == {(0.0, top)}
    colour_bars = [axis for axis in figure.axes if axis.get_label() == "<colorbar>"]
    assert len(colour_bars) == 1
    # The maps of one parameter's two uses stand side by side on one row.
    titles = [image.axes.get_title() for image in images]
    rows = [round(image.axes.get_position().y0, 3) for image in images]
    assert titles[0].startswith("conv1.weight") and titles[1].startswith("conv1.weight")
    assert rows[0] == rows[1] != rows[2] == rows[3]


def test_a_small_kernel_map_has_a_tick_at_every_position(figures):
    for image in figures["shared-cnn-kernel"].axes[1].get_images():
        height, width = image.get_array().shape
        assert list(image.axes.get_xticks()) == list(range(width))
        assert list(image.axes.get_yticks()) == list(range(height))


def test_per_step_bars_share_one_axis_and_their_steps_are_integers(figures):
    figure = figures["sequence-rnn-classifier"]
    panels = [axis for axis in figure.axes if axis.get_xlabel() == "time step t"]
    assert len(panels) == 4
    assert len({axis.get_ylim() for axis in panels}) == 1
    # The input weight's norm falls from 0.41 to 2.7e-4: more than two decades, a log axis.
    assert {axis.get_yscale() for axis in panels} == {"log"}
    assert all(list(axis.get_xticks()) == list(range(6)) for axis in panels)


@pytest.mark.parametrize("key", ["shared-cnn-kernel", "sequence-rnn-classifier", "steps"])
def test_every_label_is_inside_its_frame_and_the_figure(figures, key):
    figure = figures[key]
    renderer = figure.canvas.get_renderer()
    frame = figure.bbox
    for axis in figure.axes:
        # Labels drawn at the bars' ends stay inside the axes.
        for text in axis.texts:
            if text.get_text():
                assert _inside(text.get_window_extent(renderer), axis.bbox), text.get_text()
        # Everything an axes draws (its title, tick labels, axis labels) is in the figure.
        assert _inside(axis.get_tightbbox(renderer), frame), axis.get_title()
    assert _inside(figure._suptitle.get_window_extent(renderer), frame)


def test_the_bar_labels_are_placed_inside_long_bars(figures):
    bars = figures["shared-cnn-kernel"].axes[0]
    placed = {text.get_text(): text for text in bars.texts if text.get_text()}
    # fc1.weight's bar is the longest: its label inside, right-aligned and white.
    assert placed["fc1.weight"].get_ha() == "right" and placed["fc1.weight"].get_color() == "white"
    assert placed["conv1.bias"].get_ha() == "left"


def test_the_steps_panels_are_stacked_with_readable_ticks(figures):
    top, bottom = figures["steps"].axes
    assert top.get_position().y0 > bottom.get_position().y1       # stacked, full width
    assert [f"{tick:.0e}" for tick in bottom.get_xticks()] == [
        f"{10.0 ** -k:.0e}" for k in range(0, 301, 50)]


@pytest.mark.slow
def test_explain_draws_a_case_without_parts_and_with_an_embedding(monkeypatch):
    """A tied pair (no panel below the bars) and the tied language model (an embedding's
    rows beside per-step bars) are laid out without a warning, their labels in the frame."""
    for name in ("tied-soft-lasserre", "sequence-tied-lm"):
        found = explain.case_contributions(get_case(name))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            figure = _figure(monkeypatch, explain, explain.plot_explanation, name, found)
        assert figure.get_suptitle().startswith(f"refimpl explain {name}")
        if name == "sequence-tied-lm":
            # Per-step norms within two decades: a linear axis, one for all four panels.
            panels = [axis for axis in figure.axes if axis.get_xlabel() == "time step t"]
            assert len(panels) == 4 and {axis.get_yscale() for axis in panels} == {"linear"}
            assert len({axis.get_ylim() for axis in panels}) == 1
        renderer = figure.canvas.get_renderer()
        for axis in figure.axes:
            for text in axis.texts:
                if text.get_text():
                    assert _inside(text.get_window_extent(renderer), axis.bbox), text
        pyplot().close(figure)
