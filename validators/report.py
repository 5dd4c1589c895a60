"""The gate's human report: ``report.html`` from a jinja2 template, with matplotlib plots inlined.

Plots (PNG, base64 ``data:`` URIs, so the report is one self-contained file): per-timestep action
mean +- std bands per dim with the pooled-to-per-position spread ratio, gripper histograms sim vs real, workspace boxes per axis (whiskers at
min/max, box at q01..q99, line at the mean). Figures are built with ``matplotlib.figure.Figure``
and the Agg canvas directly: no pyplot global state, no display needed.
"""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from stepnorm.stats.combine import quantile_key

_COLORS = {"sim": "#d95f02", "real": "#1b9e77", "combined": "#444444"}


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(n: int, title: str, size=(3.4, 2.5)):
    from matplotlib.figure import Figure

    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(size[0] * cols, size[1] * rows + 0.4), layout="constrained")
    fig.suptitle(title)
    return fig, [fig.add_subplot(rows, cols, i + 1) for i in range(n)]


def _color(ctx, name: str | None, i: int) -> str:
    import matplotlib

    if name is None:
        return _COLORS["combined"]
    domain_colors = matplotlib.colormaps["Oranges" if ctx.dataset(name).domain == "sim" else "Greens"]
    return domain_colors(0.55 + 0.35 * ((i * 0.37) % 1.0))


def per_timestep_figure(ctx):
    """Per action dim: mean +- std over chunk positions k, per dataset and combined; on a second
    (log) axis, the combined pooled spread over the spread at k in the configured mode, the ratio
    ``stats_health.global_norm_weights`` reads (global normalization weighs the loss at k by its
    inverse squared)."""
    from stepnorm.validators.stats_health import spread_by_position

    art = ctx.artifact
    blocks = [(n, art.stats("action", "per_timestep", n)) for n in art.dataset_names]
    blocks.append((None, art.stats("action", "per_timestep")))
    dim = blocks[0][1]["mean"].shape[-1]
    fig, axes = _grid(dim, "Per-timestep action statistics: mean ± std over chunk position k;"
                           " dotted: pooled spread / spread at k (right axis)")
    spec = ctx.cfg.normalization.get("action")
    pooled, spread = spread_by_position(ctx, None, spec.mode if spec else "mean_std")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = pooled[None, :] / spread
    k = np.arange(art.horizon)
    for d, ax in enumerate(axes):
        for i, (name, st) in enumerate(blocks):
            mean, std = st["mean"][:, d], st["std"][:, d]
            color = _color(ctx, name, i)
            ax.plot(k, mean, color=color, ls="--" if name is None else "-", label=name or "combined")
            ax.fill_between(k, mean - std, mean + std, color=color, alpha=0.15)
        ax.set_title(f"action dim {d}", fontsize=9)
        ax.set_xlabel("k", fontsize=8)
        ax.tick_params(labelsize=7)
        shown = np.isfinite(ratio[:, d]) & (ratio[:, d] > 0)
        if shown.any():
            twin = ax.twinx()
            twin.plot(k[shown], ratio[shown, d], color="#7570b3", ls=":", lw=1.5, label="pooled / spread_k")
            twin.set_yscale("log")
            twin.tick_params(labelsize=7, colors="#7570b3")
    axes[0].legend(fontsize=7)
    return fig


def per_timestep_plot(ctx) -> str | None:
    """``per_timestep_figure`` as a PNG data URI."""
    return _png(per_timestep_figure(ctx))


def gripper_plot(ctx) -> str | None:
    """Per gripper dim: histograms of the sampled values of every dataset (sim vs real)."""
    dims = sorted({d for ds in ctx.cfg.datasets for d in ds.gripper_dims})
    series = {d: [(ds.name, ctx.sample(ds.name).action[:, d]) for ds in ctx.cfg.datasets
                  if d in ds.gripper_dims and ctx.sample(ds.name) is not None
                  and ctx.sample(ds.name).action is not None and d < ctx.sample(ds.name).action.shape[1]]
              for d in dims}
    series = {d: s for d, s in series.items() if s}
    if not series:
        return None
    fig, axes = _grid(len(series), "Gripper command: sampled values, sim vs real")
    for ax, (d, items) in zip(axes, series.items()):
        lo = min(v.min() for _, v in items)
        hi = max(v.max() for _, v in items)
        edges = np.linspace(lo, hi if hi > lo else lo + 1, 41)
        for i, (name, values) in enumerate(items):
            ax.hist(values, bins=edges, histtype="stepfilled", alpha=0.45, density=True, color=_color(ctx, name, i),
                    label=f"{name} ({ctx.dataset(name).domain})")
        ax.set_title(f"action dim {d}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _png(fig)


def workspace_plot(ctx) -> str | None:
    """Per position (state) dim: a box per dataset (whiskers min/max, box q01..q99, mean line)."""
    lo_key, hi_key = quantile_key(0.01), quantile_key(0.99)
    dims = sorted({d for ds in ctx.cfg.datasets for d in ds.position_dims})
    boxes = {}
    for d in dims:
        for i, ds in enumerate(ctx.cfg.datasets):
            if d not in ds.position_dims or "state" not in ctx.artifact.block(ds.name):
                continue
            st = ctx.artifact.stats("state", "global", ds.name)
            if d >= st["mean"].shape[-1]:
                continue
            boxes.setdefault(d, []).append((ds.name, {
                "whislo": st["min"][d], "q1": st[lo_key][d] if lo_key in st else st["min"][d],
                "med": st["mean"][d], "q3": st[hi_key][d] if hi_key in st else st["max"][d],
                "whishi": st["max"][d], "label": ds.name, "fliers": []}, _color(ctx, ds.name, i)))
    if not boxes:
        return None
    fig, axes = _grid(len(boxes), "Workspace per axis: min/max whiskers, q01..q99 box, mean line", size=(3.4, 2.8))
    for ax, (d, items) in zip(axes, boxes.items()):
        artists = ax.bxp([b for _, b, _ in items], vert=False, patch_artist=True, showfliers=False)
        for patch, (_, _, color) in zip(artists["boxes"], items):
            patch.set_facecolor(color)
            patch.set_alpha(0.6)
        ax.set_title(f"state dim {d}", fontsize=9)
        ax.tick_params(labelsize=7)
    return _png(fig)


def _cell(v) -> str:
    """A table cell: floats to 4 significant digits, lists comma-separated, None empty."""
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(str(x) for x in v)
    return "" if v is None else str(v)


def _table(rows: list[dict]) -> dict:
    """A metric table for the template: columns (without bookkeeping ones) and formatted cells."""
    skip = {"datasets", "dims", "label"}
    columns = [c for c in rows[0] if c not in skip] if rows else []
    for r in rows[1:]:
        columns += [c for c in r if c not in skip and c not in columns]

    return {"columns": columns, "rows": [[_cell(r.get(c)) for c in columns] for r in rows[:500]],
            "truncated": max(0, len(rows) - 500)}


_CAPTIONS = {
    "Per-timestep action statistics": (
        "Dotted (right axis, log): the pooled spread over the spread at chunk position k. Global normalization "
        "weighs the loss at k by the inverse of its square, so a ratio far above 1 at k=0 means the first actions, "
        "the ones executed, get little of the gradient (stats_health / positions; docs/evidence.md)."),
}


def render_html(ctx, result, doc: dict) -> str:
    """The report page for a finished gate run."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("stepnorm.validators", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    env.filters["cell"] = _cell
    plots = [(title, uri) for title, uri in (
        ("Per-timestep action statistics", per_timestep_plot(ctx)),
        ("Gripper histograms", gripper_plot(ctx)),
        ("Workspace boxes", workspace_plot(ctx)),
    ) if uri]
    tables = [(f"{validator} / {name}", _table(rows)) for validator, named in ctx.tables.items()
              for name, rows in named.items() if rows]
    return env.get_template("report.html.j2").render(
        doc=doc, passed=result.passed, findings=result.findings, plots=plots, tables=tables, captions=_CAPTIONS,
        datasets=[(ds.name, ds.domain, ds.format) for ds in ctx.cfg.datasets], config=ctx.cfg.path)
