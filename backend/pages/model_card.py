"""The model card, ``/p/NAME/model``: the trained model belongs to everyone who trained it.

What the model is (recipe, hyperparameters, held-out metrics), what it learnt from, who
made it and with how much compute, its licence, and how to take it away: the download, its
signed manifest, and ``python -m federated.fetch`` with the snippet that loads it.
"""

from __future__ import annotations

from backend.pages.document import document, h, status_badge, time_element
from backend.pages.formatting import format_count, format_credit_with_unit
from backend.pages.privacy import render_privacy
from backend.pages.views import ModelCardView

_DATA = {
    "builtin": "a public data set built into the recipe, split among the volunteers",
    "local": "the volunteers' own data, which never left their computers: only model updates did",
}


def _table(caption: str, rows: tuple[tuple[str, str], ...]) -> str:
    body = "".join(f'<tr><th scope="row">{h(k)}</th><td>{h(v)}</td></tr>' for k, v in rows)
    return f'<table class="fact-table"><caption>{h(caption)}</caption><tbody>{body}</tbody></table>'


def render_model_card(view: ModelCardView) -> str:
    api = f"/api/v1/projects/{h(view.name)}"
    final = view.status == "finished"
    which = "Final model" if final else "Current model"
    licence = view.license or "not stated by the organiser (ask before reusing it)"
    made = [
        ("Contributors", format_count(view.contributors)),
        ("Updates aggregated", format_count(view.updates_accepted)),
        ("Compute given", format_credit_with_unit(view.total_credit)),
    ]
    if view.examples_trained is not None:
        made.append(("Examples trained", format_count(view.examples_trained)))
    about = (
        ("Recipe", f"{view.recipe} v{view.recipe_version}"),
        ("Strategy", view.strategy),
        ("Rounds", "synchronous" if view.mode == "sync" else "asynchronous (FedBuff)"),
        ("Update codec", view.codec),
        ("Trained on", _DATA.get(view.data_mode, view.data_mode)),
    )
    metrics = tuple((k, f"{v:.4g}") for k, v in view.metrics) or (("(none yet)", ""),)
    fetch = f"python -m federated.fetch {view.page_url} --fingerprint {view.key_fingerprint}"
    body = (
        '<div class="model-card"><section class="project-head">'
        f'<p class="eyebrow">{h(which)} · <a href="/p/{h(view.name)}">{h(view.name)}</a></p>'
        f"<h1>{h(view.name)} v{view.version} {status_badge(view.status)}</h1>"
        f'<p class="lede">{h(view.description)}</p>'
        + (
            f'<p class="note">Finished: {h(view.finished_reason)}.</p>'
            if view.finished_reason
            else ""
        )
        + "</section>"
        '<section class="card"><h2>Take it away</h2>'
        f'<p><a href="{api}/models/{h(view.digest)}" '
        f'download="{h(view.name)}-v{view.version}.safetensors">Download the model</a> '
        f"(safetensors, float32), published {time_element(view.created_at, view.now)}; "
        f'its <a href="{api}/versions/{view.version}/manifest">signed manifest</a>.</p>'
        f"<p>sha256 <code>{h(view.digest)}</code>, signed by the project key "
        f"<code>{h(view.key_fingerprint)}</code>.</p>"
        "<p>One command downloads it, checks the signature and the digest, and prints how "
        f"to load it:</p><pre><code>{h(fetch)}</code></pre>"
        f"<p>Or in Python:</p><pre><code>{h(view.load_snippet)}</code></pre>"
        "</section>"
        f'<section class="card"><h2>Licence</h2><p>{h(licence)}</p></section>'
        '<div class="fact-tables">'
        + _table("How it was trained", about)
        + _table("Held-out metrics", metrics)
        + _table("Who made it", tuple(made))
        + _table("Hyperparameters", view.hparams)
        + "</div>"
        + (render_privacy(view.privacy) if view.privacy else "")
        + "</div>"
    )
    return document(
        f"{view.name} v{view.version} · model card · Barnraise",
        body,
        description=f"Model card of {view.name}, version {view.version}",
    )
