"""The fallback section of a run report (markdown and HTML): the budget, the layers left in float,
the search-subset and held-out figures, and what the fallback costs in throughput."""

from __future__ import annotations

from calib.report.schema import as_json
from calib.report.html import esc, section, table
from calib.report.format import change, images, pct, points

SLOWER_THAN_FP32 = ("the model with fallback runs slower than FP32 itself (switching between float and INT8 "
                    "layers costs more than the INT8 layers save): ship FP32, or try another calibrator first "
                    "(calib compare)")


def render_markdown(fb: dict) -> str:
    """Lines for report.md (the lead appends them under the run's table)."""
    fb = as_json(fb)
    s = fb["search"]
    lines = ["", "## Fallback to the accuracy budget", "",
             f"- budget: {fb['budget_text']}",
             f"- search subset: {images(s['images'])} of the evaluation"
             + (f" (layers ranked on {fb['ranking_images']} of them)" if fb["ranking_images"] else "")
             + f"; the final figures above come from the other {images(fb['final_images'])}, held out",
             f"- all INT8 on the search subset: drop {points(s['int8']['drop'])} points, agreement "
             f"{100 * s['int8']['agreement']:.2f}%",
             f"- with fallback on the search subset: drop {points(s['fallback']['drop'])} points, agreement "
             f"{100 * s['fallback']['agreement']:.2f}%"]
    if "final" in fb:
        f = fb["final"]
        lines.append(f"- with fallback on the held-out subset: drop {points(f['drop'])} points, agreement "
                     f"{100 * f['agreement']:.2f}% — budget {'met' if fb['final_met'] else 'NOT met'}")
    lines.append(f"- layers left in float ({len(fb['float_layers'])} of {fb['layers']}): "
                 + (", ".join(f"`{x}`" for x in fb["float_layers"]) or "none"))
    t = fb.get("throughput")
    if t:
        lines.append(f"- INT8 throughput (ONNX Runtime CPU, batch {t['batch_size']}): {t['int8']:.1f} → "
                     f"{t['fallback']:.1f} img/s ({change(t['cost'], 1)}); FP32 {t['fp32']:.1f} img/s")
        if fb.get("slower_than_fp32"):
            lines.append(f"- warning: {SLOWER_THAN_FP32}")
    return "\n".join(lines) + "\n"


def render_html(fb: dict) -> str:
    """The fallback section of a run's report.html."""
    fb = as_json(fb)
    s, f = fb["search"], fb.get("final")
    met = fb.get("final_met")
    parts = [f"<p>Budget: {esc(fb['budget_text'])}. The search ran on <b>{images(s['images'])}</b> of the "
             f"evaluation; the final figures come from the <b>{images(fb['final_images'])}</b> held out, which it never saw "
             f"(the report's top-1/agreement above are those).</p>"]
    rows = [["all INT8 (search set)", pct(s["int8"]["drop"]), pct(s["int8"]["agreement"]), "0"],
            ["fallback (search set)", pct(s["fallback"]["drop"]), pct(s["fallback"]["agreement"]),
             str(len(fb["float_layers"]))]]
    if f:
        rows.append(["fallback (held-out)", pct(f["drop"]), pct(f["agreement"]), str(len(fb["float_layers"]))])
    parts.append(table(["model", "top-1 drop", "agreement", "layers in float"], rows))
    if met is not None:
        parts.append(f'<p class="{"good" if met else "bad"}">Held-out set: budget '
                     f'{"met" if met else "NOT met (the search set over-fitted; use more evaluation images)"}.</p>')
    t = fb.get("throughput")
    if t:
        parts.append(f"<p>INT8 throughput (ONNX Runtime CPU, batch {t['batch_size']}): all INT8 "
                     f"{t['int8']:.1f} img/s, with fallback {t['fallback']:.1f} img/s "
                     f"(<b>{change(t['cost'], 1)}</b>); FP32 {t['fp32']:.1f} img/s.</p>")
        if fb.get("slower_than_fp32"):
            parts.append(f'<p class="bad">{esc(SLOWER_THAN_FP32)}.</p>')
    if fb["float_layers"]:
        parts.append(f"<p>{len(fb['float_layers'])} of {fb['layers']} layers left in float (most damaging "
                     f"first):</p><ol class=\"cols\">" + "".join(
                         f"<li><code>{esc(x)}</code></li>" for x in fb["float_layers"]) + "</ol>")
    else:
        parts.append("<p>The all-INT8 model already meets the budget: no layer left in float.</p>")
    if fb["ranking_images"]:
        parts.append(f"<p class=\"small\">Search: {esc(fb['strategy'])}; {fb['evaluations']} candidate models "
                     f"evaluated; ranking: {esc(fb['measure'])} on {fb['ranking_images']} search images.</p>")
    return section("fallback", "Fallback to the accuracy budget", parts)
