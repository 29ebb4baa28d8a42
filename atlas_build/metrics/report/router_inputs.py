"""The report's section on what the router saw: the geometry control and routing predictability."""

from __future__ import annotations


def _ci(iv: dict | None, digits: int = 3) -> str:
    if not iv or iv.get("estimate") is None:
        return "–"
    low, high = iv.get("ci_low"), iv.get("ci_high")
    if low is None or high is None:
        return f"{iv['estimate']:.{digits}f}"
    return f"{iv['estimate']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _at(iv: dict | None, i: int) -> dict | None:
    if not iv:
        return None
    return {key: iv[key][i] for key in ("estimate", "ci_low", "ci_high")}


def router_input_section(metrics: dict) -> list[str]:
    """Markdown lines: per model, the geometry control (how much of the raw Δκ the router-input similarity
    explains) and the held-out routing predictability per layer. Empty when no model has either."""
    models = metrics.get("models", {})
    geometry = {
        slug: ((e.get("sense_pairs") or {}).get("controls") or {}).get("hidden_state")
        for slug, e in models.items()
    }
    geometry = {slug: g for slug, g in geometry.items() if g}
    predictability = {slug: e["predictability"] for slug, e in models.items() if e.get("predictability")}
    if not geometry and not predictability:
        return []
    lines = ["", "## What the router saw: geometry and predictability", ""]
    for slug, g in geometry.items():
        tag = " (RANDOM-INIT)" if models[slug].get("random_init") else ""
        if g.get("error"):
            lines.append(f"- `{slug}`{tag}: the geometry control was not computed ({g['error']}).")
            continue
        lines.append(
            f"- `{slug}`{tag}: at the {len(g['layers'])} layers with stored router inputs ({g['layers']}), raw "
            f"Δκ = {_ci(g['raw']['layer_mean']['delta'])}; net of the targets' router-input similarity "
            f"(`hidden_state`) Δκ = {_ci(g['layer_mean']['delta'])}: geometry explains "
            f"{_ci(g['explained'])} of the raw effect (1 = all of it, 0 = none; {g['n_pairs']} pairs)."
        )
    for slug, p in predictability.items():
        tag = " (RANDOM-INIT)" if models[slug].get("random_init") else ""
        names = p["predictors"]
        lines += [
            "",
            f"Routing predictability of `{slug}`{tag}: held-out share of a token's experts predicted "
            f"({p['n_tokens_test']} tokens of {p['n_texts_test']} texts; chance {p['chance']:.3f}).",
            "",
            "| layer | " + " | ".join(names) + " |",
            "|---:|" + "---|" * len(names),
        ]
        for i, layer in enumerate(p["layers"]):
            cells = [_ci(_at(p["accuracy"][n], i)) if p["accuracy"].get(n) else "–" for n in names]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    return lines
