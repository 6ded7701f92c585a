"""Interactive plotly figures that work on the published site without a network.

    import plotly.express as px
    offline(px.line(frame, x="grid", y="ms", color="candidate", log_x=True),
            "Time of one training step against the grid size, one line per implementation")

The page loads plotly.js from the site's own ``_static/plotly.min.js`` (the build copies it from the plotly
package); in JupyterLab the figure's JSON is there for plotly's own renderer.
"""
from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["PLOTLY_JS", "OfflineFigure", "offline"]

# Where a notebook page (notebooks/NN_x.html) and a deck (slides/NN_x.slides.html) find plotly.js.
PLOTLY_JS = "../_static/plotly.min.js"

# plotly.min.js registers itself as an anonymous AMD module when RequireJS is on the page (the decks load it),
# which RequireJS rejects: hide `define` while it loads.
_LOAD_PLOTLY = f"""<script>window.kanlibDefine = window.define; window.define = undefined;</script>
<script src="{PLOTLY_JS}"></script>
<script>window.define = window.kanlibDefine;</script>"""


class OfflineFigure:
    """A plotly figure with a text description; shown as HTML on the site and as plotly JSON in JupyterLab."""

    def __init__(self, figure: Any, description: str):
        import plotly.graph_objects as go

        if not isinstance(figure, go.Figure):
            raise TypeError(f"figure: expected a plotly.graph_objects.Figure, got {type(figure).__name__}")
        if not isinstance(description, str) or not description.strip():
            raise ValueError(f"description: expected a sentence saying what the figure shows, got {description!r}")
        self.figure = figure
        self.description = description.strip()

    def to_html(self) -> str:
        div = self.figure.to_html(include_plotlyjs=False, full_html=False, config={"displaylogo": False})
        return (f'<div class="kanlib-plotly" role="figure" aria-label="{html.escape(self.description)}">\n'
                f"{_LOAD_PLOTLY}\n{div}\n</div>")

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, Any]:
        return {"application/vnd.plotly.v1+json": json.loads(self.figure.to_json()), "text/html": self.to_html(),
                "text/plain": f"Interactive figure: {self.description}"}


def offline(figure: Any, description: str) -> OfflineFigure:
    """`figure` ready to display in a notebook; `description` is its text alternative for screen readers."""
    return OfflineFigure(figure, description)
