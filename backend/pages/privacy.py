"""The project page's "Privacy" section: the differential-privacy promise, the budget
spent so far, and which protections the project has and which it gave up for it (issue 14).

Every number is the coordinator's; nothing here is user text, but it is escaped all the
same, like the rest of the page.
"""

from __future__ import annotations

from html import escape

from backend.pages.views import PrivacyView


def _h(text: object) -> str:
    return escape(str(text), quote=True)


def _budget(view: PrivacyView) -> str:
    share = 0.0 if view.epsilon <= 0 else min(1.0, view.epsilon_spent / view.epsilon)
    state = "spent: training has ended" if view.exhausted else f"{share:.0%} spent"
    return (
        f'<p class="privacy-budget"><b>ε spent</b> <span id="epsilon-spent">'
        f'{view.epsilon_spent:.3g}</span> of <span id="epsilon-budget">{view.epsilon:g}'
        f"</span> (δ = {view.delta:g}) · {_h(state)}</p>"
        f'<meter min="0" max="1" value="{share:.4f}" aria-label="privacy budget spent">'
        f"{share:.0%}</meter>"
    )


def _record_level(view: PrivacyView) -> tuple[str, list[str], list[str]]:
    how = (
        "<b>Record-level differential privacy (DP-SGD).</b> Each contributor&rsquo;s "
        f"computer clips every example&rsquo;s gradient to {view.clip_norm:g} and adds "
        f"Gaussian noise of {view.noise_multiplier:g}&times; that bound before anything "
        "leaves it, and keeps its own privacy accountant: it stops training when ε on its "
        f"own data would pass {view.epsilon:g}. The ε shown is the largest a contributor "
        f"reported ({view.steps} reports); the coordinator cannot check it, because each "
        "contributor&rsquo;s noise is its own secret."
    )
    has = [
        "no single record of a contributor&rsquo;s data can be inferred from its updates, "
        "whatever the coordinator does",
        "every update signed; norm bounds and free-ride screens at upload",
    ]
    gave_up = ["spot checks by re-execution (the noise is secret to each contributor)"]
    return how, has, gave_up


def _user_level(view: PrivacyView) -> tuple[str, list[str], list[str]]:
    adaptive = (
        f", adapted each version so that about {view.clip_quantile:.0%} of updates are not clipped"
        if view.clip_quantile > 0
        else ""
    )
    how = (
        "<b>User-level differential privacy (DP-FedAvg).</b> The coordinator clips each "
        f"contributor&rsquo;s whole update to a bound (now {view.clip_norm:.4g}{adaptive}), "
        "takes at most one update per contributor into each aggregate and adds Gaussian "
        f"noise of {view.noise_multiplier:g}&times; the bound to their sum, so no "
        "contributor&rsquo;s participation can be inferred from the published models. "
        f"{view.steps} noisy aggregates so far, counted by an RDP accountant with no "
        "amplification by sampling claimed (who took part in a version is public). Training "
        "stops when the next aggregate would pass the budget."
    )
    has = [
        "every update signed, spot-checked and bounded by the privacy clip",
        "the version gate judges each noisy aggregate on held-out data",
    ]
    gave_up = [
        "the coordinator sees single updates (no secure aggregation): it is trusted with them",
        "median-norm screens (they judge an update by the others&rsquo;)",
        "the version gate&rsquo;s search for the one harmful update (each try would spend budget)",
    ]
    return how, has, gave_up


def render_privacy(view: PrivacyView | None) -> str:
    """The section, or nothing for a project without differential privacy."""
    if view is None:
        return ""
    how, has, gave_up = (_record_level if view.mechanism == "dp-sgd" else _user_level)(view)
    has_html = "".join(f"<li>{item}</li>" for item in has)
    gave_up_html = "".join(f"<li>{item}</li>" for item in gave_up)
    return (
        '<section id="privacy"><h2>Privacy</h2><div class="card">'
        f"{_budget(view)}<p>{how}</p>"
        f"<h3>Protections</h3><ul>{has_html}</ul>"
        f"<h3>Given up for privacy</h3><ul>{gave_up_html}</ul>"
        "</div></section>"
    )
