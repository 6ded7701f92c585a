"""Offline plotly figures: plotly.js from the site itself, JSON for JupyterLab, a text alternative."""
from __future__ import annotations

import json

import numpy as np
import pytest

from kanlib.book.interactive import PLOTLY_JS, offline


def test_offline_figure_loads_plotly_from_the_site_and_describes_itself():
    import plotly.express as px

    figure = px.line(x=np.arange(4), y=np.arange(4) ** 2)
    bundle = offline(figure, "Squares against x")._repr_mimebundle_()
    page = bundle["text/html"]
    assert f'<script src="{PLOTLY_JS}"></script>' in page and "cdn" not in page.lower()
    assert 'aria-label="Squares against x"' in page and "Plotly.newPlot" in page
    json.dumps(bundle)  # what nbformat stores must be JSON
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "scatter"
    assert bundle["text/plain"] == "Interactive figure: Squares against x"


def test_bad_input_is_named():
    import plotly.express as px

    with pytest.raises(TypeError, match="expected a plotly.graph_objects.Figure, got dict"):
        offline({}, "x")
    with pytest.raises(ValueError, match="expected a sentence"):
        offline(px.line(x=[0, 1], y=[0, 1]), "  ")
