"""The pages of a study summary: one self-contained HTML file (``study.html``), and Markdown
tables with PNG figures (``study.md``, ``figures/``).

The page's figures are PNGs drawn by matplotlib (Agg backend) and embedded as data URIs; nothing
is loaded from the network. It shows, for each probe group, the validation rank-1 against the
iteration for every variant (the mean across seeds as a line, the 95 % interval as a band, each
seed faintly), the final test table (mean ± half width of the interval), the paired differences
with the reference variant, the iterations to reach the target, the tuning (when the study has a
``tune:`` section: per variant the default and the tuned validation score, the chosen values and
the trials done), every run, and the study itself.
Every string that comes from data is escaped by the template engine.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import jinja2
import yaml

TEMPLATE = Path(__file__).with_name("study.html.j2")


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curve_plots(summary: dict) -> dict[str, str]:
    """:func:`curve_figures` as data URIs, for the HTML page."""
    return {
        g: "data:image/png;base64," + base64.b64encode(png).decode()
        for g, png in curve_figures(summary).items()
    }


def curve_figures(summary: dict) -> dict[str, bytes]:
    """One PNG per probe group: validation rank-1 (%) against the iteration, or against the
    training sequences seen (iteration x P x K) when variants differ in batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    target = summary["study"]["target"]
    sizes = {v["sequences_per_iteration"] for v in summary["variants"]}
    by_sequences = len(sizes) > 1
    plots = {}
    for g in summary["conditions"]:
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, v in enumerate(summary["variants"]):
            color = colors[i % len(colors)]
            scale = v["sequences_per_iteration"] if by_sequences else 1
            for r in (r for r in summary["runs"] if r["variant"] == v["name"]):
                pts = [
                    (int(it) * scale, 100 * c[g]["rank1"])
                    for it, c in r["validation"].items()
                    if g in c and c[g]["rank1"] is not None
                ]
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=color, alpha=0.25, lw=0.8)
            cells = [(int(it) * scale, c.get(g)) for it, c in v["validation"].items() if c.get(g)]
            if not cells:
                continue
            its = [it for it, _ in cells]
            ax.plot(its, [100 * c["mean"] for _, c in cells], color=color, lw=2, label=v["name"])
            band = [(it, c) for it, c in cells if c["low"] is not None]
            if band:
                ax.fill_between(
                    [it for it, _ in band],
                    [100 * c["low"] for _, c in band],
                    [100 * c["high"] for _, c in band],
                    color=color,
                    alpha=0.18,
                    lw=0,
                )
        if target is not None and g == summary["target_condition"]:
            ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:g} %")
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -2), min(hi, 102))  # a band may reach past 0 or 100; rank-1 cannot
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(
            "training sequences seen (iteration × P × K)" if by_sequences else "iteration"
        )
        ax.set_ylabel("validation rank-1 (%)")
        ax.set_title(f"{g}: mean across seeds, 95 % interval")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        plots[g] = _png(fig)
    return plots


# The panels of the training figure: statistic (runner.TRAINING_STATISTICS) and its axis label.
TRAINING_PANELS = {
    "active_pos": "active positive pairs (fraction)",
    "active_neg": "active negative pairs (fraction)",
    "active_queries": "queries with a loss (fraction)",
    "grad_norm": "gradient norm reaching the model",
    "geometry/own_center": "sample to own center",
    "geometry/pos_pair": "positive pair",
    "geometry/neg_pair": "negative pair",
    "geometry/center_to_pair": "own center / positive pair",
}


def training_figure(summary: dict) -> bytes | None:
    """One PNG of what each variant's loss saw during training (mean across seeds): the active
    fractions, the gradient that reached the model and the batch's distances on normalized
    features (docs/losses.md, "Statistics"); None when no run logged them."""
    panels = [
        key
        for key in TRAINING_PANELS
        if any(key in v.get("training", {}) for v in summary["variants"])
    ]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = {v["sequences_per_iteration"] for v in summary["variants"]}
    by_sequences = len(sizes) > 1
    columns = 4
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(13, 3.0 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key in zip(axes.flat, panels, strict=False):
        for i, v in enumerate(summary["variants"]):
            points = v.get("training", {}).get(key)
            if points:
                scale = v["sequences_per_iteration"] if by_sequences else 1
                its, values = zip(*points, strict=True)
                ax.plot(
                    [it * scale for it in its],
                    values,
                    color=colors[i % len(colors)],
                    lw=1.4,
                    label=v["name"],
                )
        ax.set_title(TRAINING_PANELS[key], fontsize=9)
        if key == "grad_norm":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8)
    fig.supxlabel(
        "training sequences seen (iteration × P × K)" if by_sequences else "iteration",
        fontsize=9,
        y=0.06,
    )
    fig.suptitle(
        "training statistics, mean across seeds (distances on normalized features)", fontsize=10
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    return _png(fig)


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pm(i: dict | None) -> str:
    """``mean ± half width`` in percent; the mean alone when the interval is undefined."""
    if i is None:
        return "–"
    if i["high"] is None:
        return _pct(i["mean"])
    return f"{100 * i['mean']:.1f} ± {100 * (i['high'] - i['mean']):.1f}"


def _signed(x) -> str:
    """Percentage points with a sign, ``0.0`` without one (never ``-0.0``)."""
    if x is None:
        return "–"
    text = f"{100 * x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def _interval(low, high) -> str:
    return "–" if low is None or high is None else f"[{_signed(low)}, {_signed(high)}]"


def _p(p) -> str:
    if p is None:
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _values(values: dict | None) -> str:
    """``key=value, ...`` of a trial's hyper-parameters (floats to 4 significant digits)."""
    if not values:
        return "–"

    def show(v) -> str:
        return f"{v:.4g}" if isinstance(v, float) else json.dumps(v, default=str)

    return ", ".join(f"{k}={show(v)}" for k, v in values.items())


def _row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _table(header: list[str], rows: list[list]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return [_row(header), _row(align), *(_row(r) for r in rows), ""]


def to_markdown(summary: dict, figures: dict[str, str] | None = None) -> str:
    """The study's figures as Markdown (``study.md``): the final test table, the paired
    differences with the reference, the iterations to reach the target; ``figures`` (probe
    group -> image path) adds the validation curves. For a paper, a pull request or
    docs/results.md."""
    s = summary
    groups = s["conditions"]
    done = len(s["runs"]) - len(s["incomplete"])
    lines = [
        f"## {s['study']['name']}",
        "",
        f"{done} of {len(s['runs'])} runs done ({len(s['variants'])} variants); protocol "
        f"{s['study']['protocol']}; training on {len(s['subjects']['train'])} subjects, validation "
        f"on {len(s['subjects']['validation'])}, test on {len(s['subjects']['test'])}. Rank-1 in "
        "percent, mean ± half width of the 95 % Student-t interval across seeds.",
        "",
    ]
    if figures:
        lines += [
            f"![{'training statistics' if g == 'training' else f'{g} validation rank-1'}]({path})"
            for g, path in figures.items()
        ] + [""]
    lines += ["**Final test rank-1 (%)**", ""]
    lines += _table(
        ["variant", *groups, "seeds"],
        [
            [
                f"**{v['name']}**" if v["name"] in s["references"] else v["name"],
                *(_pm(v["test"][g]) for g in groups),
                max((v["test"][g] or {}).get("n", 0) for g in groups),
            ]
            for v in s["variants"]
        ],
    )
    if s["comparisons"]:
        lines += [
            f"**Paired differences with {s['reference']}** (percentage points, seed by seed: "
            "mean, 95 % t interval, percentile bootstrap interval, two-sided paired t-test)",
            "",
        ]
        lines += _table(
            [
                "variant",
                "reference",
                "condition",
                "seeds",
                "difference",
                "t interval",
                "bootstrap",
                "p",
            ],
            [
                [
                    c["variant"],
                    c["reference"],
                    c["condition"],
                    c["n"],
                    _signed(c["mean"]),
                    _interval(c["low"], c["high"]),
                    _interval(c["boot_low"], c["boot_high"]),
                    _p(c["p_value"]),
                ]
                for c in s["comparisons"]
                if c["n"]
            ],
        )
    if s["study"]["target"] is not None:
        lines += [
            f"**Iterations to reach validation {s['target_condition']} rank-1 of "
            f"{s['study']['target']:g} %** (of the mean curve; seeds that reach it)",
            "",
        ]
        rows = []
        for v in s["variants"]:
            t = v["iterations_to_target"]
            it = t["mean_curve"]
            seen = "–" if it is None else f"{it * v['sequences_per_iteration']:,}"
            rows.append(
                [
                    v["name"],
                    "not reached" if it is None else it,
                    seen,
                    f"{t['reached']} / {t['n']}",
                ]
            )
        lines += _table(["variant", "mean curve", "sequences seen", "seeds"], rows)
    return "\n".join(lines)


def to_html(summary: dict) -> str:
    """The self-contained page of a :func:`~gaittrain.study.summary.build_summary` result."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(
        pct=_pct, pm=_pm, signed=_signed, interval=_interval, pvalue=_p, values=_values
    )
    spec = yaml.safe_dump(
        json.loads(json.dumps(summary["study"], default=str)),
        sort_keys=False,
        default_flow_style=None,
        width=96,
    )
    training = training_figure(summary)
    if training is not None:
        training = "data:image/png;base64," + base64.b64encode(training).decode()
    return env.get_template(TEMPLATE.name).render(
        s=summary, plots=curve_plots(summary), training=training, spec=spec
    )
