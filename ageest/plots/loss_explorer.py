"""The interactive loss explorer of notebook 01 (ipywidgets): sliders for the true age, the
sharpness and shape of the prediction, the top-K mode and the loss weights; it redraws the
distribution with its top-K set, each term's gradient and the loss values as they move."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping

import ipywidgets as widgets

from ageest.analysis.loss_illustration import (
    DEFAULT,
    SHAPES,
    Illustration,
    _check_age,
    explorer_state,
)
from ageest.plots.loss import explorer_figure


def explorer_html(state: Mapping[str, object]) -> str:
    """The explorer's numbers as an HTML table: each AMR term (unweighted, weight, weighted), the
    total, and the value of each compared loss on the same distribution."""
    t, w = state["terms"], state["weighted"]
    name = "AMR (adaptive K)" if state["k_mode"] == "adaptive" else f"mean-residue (K={state['k']})"
    rows = [
        ("cross-entropy L<sub>s</sub>", t["ce"], "1", w["ce"]),
        ("mean L<sub>m</sub>", t["mean"], f"λ1 = {state['lambda_mean']:.2f}", w["mean"]),
        ("residue L<sub>r</sub>", t["residue"], f"λ2 = {state['lambda_residue']:.2f}", w["residue"]),
    ]
    cell = 'style="padding:1px 8px;text-align:right"'
    body = "".join(
        f"<tr><td>{label}</td><td {cell}>{v:.4f}</td><td {cell}>{lam}</td>"
        f"<td {cell}>{wv:.4f}</td></tr>"
        for label, v, lam, wv in rows
    )
    body += (f"<tr><td><b>{html.escape(name)} total</b></td><td></td><td></td>"
             f"<td {cell}><b>{state['total']:.4f}</b></td></tr>")
    others = "".join(
        f"<tr><td>{html.escape(label)}</td><td {cell}>{v:.4f}</td></tr>"
        for label, v in state["losses"].items()
    )
    return (
        f"<div><b>true age {state['true_age']}</b>, expected age {state['expected_age']:.2f}, "
        f"K = {state['k']} ({state['k_mode']}), p(y) = {state['p_true']:.4f}, residue mass "
        f"{state['residue_mass']:.3f}, variance L<sub>v</sub> = {t['variance']:.3f}</div>"
        "<table><tr><th>term</th><th>value</th><th>weight</th><th>weighted</th></tr>"
        f"{body}</table>"
        "<div style='margin-top:4px'><b>Same distribution, each loss</b></div>"
        f"<table>{others}</table>"
    )


class LossExplorer(widgets.VBox):
    """The interactive loss explorer: controls on the left, numbers on the right, the figure
    below; every control change recomputes :func:`explorer_state` and redraws.

    Attributes
    ----------
    controls : dict[str, ipywidgets.Widget]
        ``true_age``, ``sharpness``, ``shape``, ``noise``, ``k_mode``, ``k``, ``lambda_mean``,
        ``lambda_residue``. Setting ``.value`` on any of them updates the explorer (also without a
        browser).
    values : dict
        The last :func:`explorer_state`.
    summary : ipywidgets.HTML
        The numbers (CSS class ``ageest-loss-values``).
    image : ipywidgets.Image
        The PNG figure (CSS class ``ageest-explorer-figure``).
    """

    def __init__(
        self,
        *,
        true_age: int = 30,
        sharpness: float = 1.0,
        shape: str = "bimodal",
        k: int | None = None,
        setup: Illustration = DEFAULT,
        dpi: int = 80,
    ) -> None:
        _check_age(true_age, setup.num_classes, setup.start_age)
        if shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
        self._setup = setup  # the sliders replace its noise and weights
        self._dpi = dpi
        style = {"description_width": "100px"}
        layout = widgets.Layout(width="360px")
        start_age, end_age, num_classes = setup.start_age, setup.end_age, setup.num_classes
        self.controls: dict[str, widgets.Widget] = {
            "true_age": widgets.IntSlider(
                value=true_age, min=start_age, max=end_age, description="true age",
                continuous_update=False, style=style, layout=layout),
            "sharpness": widgets.FloatLogSlider(
                value=sharpness, base=10, min=-0.7, max=1.2, step=0.05, description="sharpness",
                readout_format=".2f", continuous_update=False, style=style, layout=layout),
            "shape": widgets.Dropdown(options=list(SHAPES), value=shape, description="shape",
                                      style=style, layout=layout),
            "noise": widgets.FloatSlider(value=setup.noise, min=0.0, max=1.5, step=0.05,
                                         description="logit noise", continuous_update=False,
                                         style=style, layout=layout),
            "k_mode": widgets.ToggleButtons(options=["adaptive", "fixed"],
                                            value="adaptive" if k is None else "fixed",
                                            description="top-K", layout=layout,
                                            style={**style, "button_width": "110px"}),
            "k": widgets.IntSlider(value=setup.fixed_k if k is None else k, min=1,
                                   max=min(num_classes, 30), description="fixed K",
                                   continuous_update=False, style=style, layout=layout,
                                   disabled=k is None),
            "lambda_mean": widgets.FloatSlider(value=setup.lambda_mean, min=0.0, max=1.0, step=0.01,
                                           description="λ1 (mean)", continuous_update=False,
                                           style=style, layout=layout),
            "lambda_residue": widgets.FloatSlider(value=setup.lambda_residue, min=0.0, max=1.0, step=0.01,
                                           description="λ2 (residue)", continuous_update=False,
                                           style=style, layout=layout),
        }
        for name, control in self.controls.items():
            control.add_class(f"ageest-{name.replace('_', '-')}")
        self.summary = widgets.HTML(layout=widgets.Layout(flex="1 1 360px", min_width="360px"))
        self.summary.add_class("ageest-loss-values")
        self.image = widgets.Image(format="png", layout=widgets.Layout(max_width="900px"))
        self.image.add_class("ageest-explorer-figure")
        self.values: dict[str, object] = {}
        super().__init__([
            widgets.HTML("<b>Loss explorer</b>: move a control; the numbers and the figure "
                         "follow."),
            # controls keep their width; the numbers wrap below them in a narrow window
            widgets.HBox(
                [widgets.VBox(list(self.controls.values()),
                              layout=widgets.Layout(flex="0 0 auto", width="380px")),
                 self.summary],
                layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start")),
            self.image,
        ])
        self.add_class("ageest-explorer")
        for control in self.controls.values():
            control.observe(self.update, names="value")
        self.update()

    def update(self, change: Mapping | None = None) -> None:
        """Recompute and redraw from the controls' current values."""
        c = self.controls
        adaptive = c["k_mode"].value == "adaptive"
        c["k"].disabled = adaptive
        setup = self._setup.replace(noise=float(c["noise"].value),
                                    lambda_mean=float(c["lambda_mean"].value),
                                    lambda_residue=float(c["lambda_residue"].value))
        state = explorer_state(int(c["true_age"].value), float(c["sharpness"].value),
                               c["shape"].value, setup, k=None if adaptive else int(c["k"].value))
        self.values = state
        self.summary.value = explorer_html(state)
        fig = explorer_figure(state)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=self._dpi)
        self.image.value = buf.getvalue()


def loss_explorer(**kwargs) -> LossExplorer:
    """Build the interactive loss explorer of notebook 01 (display it as a cell's last value).

    Keyword arguments are those of :class:`LossExplorer`: the initial ``true_age``,
    ``sharpness``, ``shape``, ``k`` (None = adaptive) and the ``setup``
    (:class:`~ageest.analysis.loss_illustration.Illustration`: the age classes, the noise and
    weights the sliders start from, and what stays fixed).

    Examples
    --------
    >>> ex = loss_explorer(true_age=30)
    >>> before = ex.values["total"]
    >>> ex.controls["true_age"].value = 40
    >>> ex.values["total"] != before
    True
    """
    return LossExplorer(**kwargs)
