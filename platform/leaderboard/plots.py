"""The HTML page's charts as inline SVG: metric over each ablation axis, and the Gen-PPL–entropy plane.

Hand-written SVG rather than a plotting library: every mark stands for a leaderboard row and carries that row's hover
text (``<title>``) and the attributes the page and its tests read (``class="point"``, ``data-kind``, ``data-source``
on error bars, ``data-dataset`` on a series). matplotlib's SVG backend sets only an id or a link per artist, so all
of that would mean rewriting its XML, and by default it embeds glyph outlines, a date and random ids, which make the
page larger and not reproducible. Two chart kinds with linear/log axes and error bars take less code than that, and
no extra dependency.

Plots group rows by (protocol name, scoring hash), unlike the tables: a sweep over sampler steps or CFG changes the
protocol hash (the protocol fixes the sampler) but not what is scored, so its rows still get one plot over that
axis (rows without ``protocol_json`` fall back to their protocol hash). Human ceilings are dashed lines in the
per-axis plots; floors are left out of those (they have no axes, and lines at their far lower scores would flatten
the curves) and are shown in the Gen-PPL–entropy plane: x = unigram entropy, y = Gen-PPL (log scale), one point
per row, human and floor rows labelled, CI error bars, the flag threshold as a dashed line.
"""
from __future__ import annotations

import html
import math
import re
from typing import Any, Callable

import pandas as pd

from .cells import PERCENT_METRICS, fmt_value, is_number, metric_label, missing
from .schema import (CEILING_METHODS, CI_HIGH, CI_LOW, FLOOR_METHODS, STD_SUFFIX, canonical_json, scoring_key,
                     sha256_hex)
from .tables import (ENTROPY_FLAG_RATIO, FLAG_MARK, axis_columns, check_metric, entropy_threshold, expand, row_ci,
                     std_column)

_PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
_PLANE_STYLE = {"model": "#0072B2", "human": "#009E73", "floor": "#D55E00"}  # kind -> colour


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def slug(prefix: str, readable: Any, *key: Any) -> str:
    """A stable HTML id: a readable part plus a hash of the full key (unique even when readable parts clash)."""
    text = re.sub(r"[^a-z0-9]+", "-", str(readable).lower()).strip("-")[:40].strip("-")
    digest = sha256_hex(canonical_json([str(readable), *map(str, key)]))[:8]
    return f"{prefix}-{text}-{digest}" if text else f"{prefix}-{digest}"


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0, 1.0]
    if hi - lo < 1e-12 * max(1.0, abs(lo), abs(hi)):
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    ticks = [math.floor(lo / step + 1e-9) * step]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(ticks[-1] + step)
    return [round(t, 12) for t in ticks]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis covering [lo, hi] (both > 0): decades, with 2 and 5 between them when the range
    spans at most two decades; the first and last tick bound the axis."""
    first, last = math.floor(math.log10(lo) + 1e-9), math.ceil(math.log10(hi) - 1e-9)
    last = max(last, first + 1)
    steps = (1, 2, 5) if last - first <= 2 else (1,)
    ticks = [m * 10.0 ** e for e in range(first, last + 1) for m in steps if m * 10.0 ** e <= 10.0 ** last * 1.000001]
    low = max(t for t in ticks if t <= lo * 1.000001)
    high = min(t for t in ticks if t >= hi / 1.000001)
    if high <= low:  # every value on one tick (e.g. a single row at Gen-PPL 20): the axis needs a range
        high = min(t for t in ticks if t > low)
    return [round(t, 12) for t in ticks if low <= t <= high]


def _fmt_tick(value: float) -> str:
    return f"{value:.4g}"


def _axes(css: str, size: tuple[int, int], box: tuple, aria: str, yticks: list[float], ty: Callable,
          x_marks: list[str], x_title: str, y_title: str) -> list[str]:
    """The start of a chart's svg: the frame, the y grid with its labels, the x marks given, both axis titles."""
    (width, height), (px0, px1, py0, py1) = size, box
    out = [f'<svg class="{css}" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'aria-label="{_esc(aria)}">',
           f'<rect class="frame" x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}"/>']
    out += [f'<line class="grid" x1="{px0}" x2="{px1}" y1="{ty(t):.1f}" y2="{ty(t):.1f}"/>'
            f'<text x="{px0 - 6}" y="{ty(t) + 4:.1f}" text-anchor="end">{_esc(_fmt_tick(t))}</text>' for t in yticks]
    return out + x_marks + [f'<text x="{(px0 + px1) / 2:.1f}" y="{height - 10}" text-anchor="middle">{_esc(x_title)}'
                            f'</text><text transform="translate(14 {(py0 + py1) / 2:.1f}) rotate(-90)" '
                            f'text-anchor="middle">{_esc(y_title)}</text>']


def _figure(css: str, fig_id: str, data: dict[str, str], svg: list[str], caption: str) -> str:
    attrs = "".join(f' data-{name}="{_esc(value)}"' for name, value in data.items())
    return (f'<figure class="{css}" id="{fig_id}"{attrs}>\n{"".join(svg)}\n'
            f'<figcaption>{_esc(caption)}</figcaption>\n</figure>')


def _shown_scoring_hash(key: dict) -> str:
    return key["scoring_hash"] if key["by"] == "scoring_hash" else ""


def _axis_value_key(value: Any) -> tuple:
    if isinstance(value, bool):
        return (0, int(value), "")
    if is_number(value):
        return (1, float(value), "")
    return (2, 0.0, fmt_value(value))


def _stats(values: list[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std, n


def _axis_points(data: pd.DataFrame, axis: str, metric: str, std: str | None, scale: float, dataset: str,
                 values: list, xs: list[float]) -> list[tuple[float, float, float, int, list[float], str]]:
    """(x, mean, std, n, ys, source) per axis value with scores on ``dataset``: source "rows" = std across the n
    rows, "seeds" = the single row's own ``<metric>_std``, "" = no spread known."""
    points = []
    for index, (k, _) in enumerate(values):
        at_x = data[axis].map(lambda a, k=k: not missing(a) and _axis_value_key(a) == k)
        mask = (data["dataset"] == dataset) & at_x
        ys = [scale * float(y) for y in data.loc[mask, metric]]
        if ys:
            mean, spread, n = _stats(ys)
            source = "rows" if n > 1 else ""
            if n == 1 and std and not missing(data.loc[mask, std].iloc[0]):
                spread, source = scale * abs(float(data.loc[mask, std].iloc[0])), "seeds"
            points.append((xs[index], mean, spread, n, ys, source))
    return points


def _axis_plot(rows: pd.DataFrame, ceilings: pd.DataFrame, axis: str, metric: str, protocol_key: dict,
               datasets: list[str]) -> str:
    """One inline SVG: x = axis value, y = metric, one colour per dataset, ceiling rows as dashed lines.
    A point is the mean over the rows sharing that value (seeds and the other axes; faint dots = those
    rows). Its error bar is +-1 std: *across those rows* when there are several, or, when the point is a
    single row, *that row's own* ``<metric>_std`` (the spread over its evaluation seeds) if it has one."""
    name = axis[len("axis."):]
    scale = 100.0 if metric in PERCENT_METRICS else 1.0
    std = std_column(metric, rows.columns)
    data = rows[[axis, "dataset", metric] + ([std] if std else [])]
    data = data[~data[axis].map(missing) & data[metric].notna()]
    values = sorted({_axis_value_key(v): v for v in data[axis]}.items())
    numeric = all(k[0] == 1 for k, _ in values)
    xs = [float(v) for _, v in values] if numeric else list(range(len(values)))
    log_x = numeric and min(xs) > 0 and max(xs) / min(xs) >= 8
    width, height, left, right, top, bottom = 660, 340, 62, 210, 18, 50
    px0, px1, py0, py1 = left, width - right, top, height - bottom

    def tx(x: float) -> float:
        if numeric:
            lo, hi = (math.log(min(xs)), math.log(max(xs))) if log_x else (min(xs), max(xs))
            x = math.log(x) if log_x else x
            pad = 0.06 * (px1 - px0)
            return px0 + pad + (x - lo) / (hi - lo) * (px1 - px0 - 2 * pad)
        step = (px1 - px0) / len(values)
        return px0 + step * (x + 0.5)

    series = {d: p for d in datasets if (p := _axis_points(data, axis, metric, std, scale, d, values, xs))}
    sources = {p[5] for points in series.values() for p in points}
    all_y = [y for points in series.values() for p in points for y in p[4] + [p[1] - p[2], p[1] + p[2]]]
    ceiling_lines = {}
    for dataset in datasets:
        ys = [scale * float(y) for y in ceilings.loc[ceilings["dataset"] == dataset, metric].dropna()]
        if ys:
            ceiling_lines[dataset] = sum(ys) / len(ys)
    if not all_y:  # only ceiling rows have scores: scale to them
        all_y = list(ceiling_lines.values())
    ticks = _nice_ticks(min(all_y), max(all_y))
    ylo, yhi = ticks[0], ticks[-1]

    def ty(y: float) -> float:
        return py1 - (y - ylo) / (yhi - ylo) * (py1 - py0)

    label = metric_label(metric) + (" (x100)" if scale != 1.0 else "")
    x_marks = []
    for (k, v), x in zip(values, xs):
        tick = _fmt_tick(float(v)) if numeric else fmt_value(v)
        x_marks.append(f'<line class="grid" x1="{tx(x):.1f}" x2="{tx(x):.1f}" y1="{py1}" y2="{py1 + 4}"/>'
                       f'<text x="{tx(x):.1f}" y="{py1 + 16}" text-anchor="middle">{_esc(tick[:18])}</text>')
    out = _axes("axis-plot-svg", (width, height), (px0, px1, py0, py1), f"{label} by {name}", ticks, ty, x_marks,
                name + (" (log scale)" if log_x else ""), label)
    step = (px1 - px0) / max(1, len(values))
    for i, dataset in enumerate(datasets):
        color = _PALETTE[i % len(_PALETTE)]
        if dataset in ceiling_lines and ylo <= ceiling_lines[dataset] <= yhi:  # off-scale ones: legend only
            y = ty(ceiling_lines[dataset])
            out.append(f'<line class="ceiling" x1="{px0}" x2="{px1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{color}" '
                       f'stroke-dasharray="5 4" stroke-width="1.2"><title>{_esc(dataset)}: human ceiling '
                       f'{ceiling_lines[dataset]:.4g}</title></line>')
        points = series.get(dataset)
        if not points:
            continue
        offset = 0.0 if numeric else (i - (len(datasets) - 1) / 2) * min(10.0, 0.5 * step / max(1, len(datasets)))
        out.append(f'<g class="series" data-dataset="{_esc(dataset)}">')
        if numeric and len(points) > 1:
            path = " ".join(f"{tx(p[0]):.1f},{ty(p[1]):.1f}" for p in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for x, mean, spread, n, ys, source in points:
            X = tx(x) + offset
            for y in ys if n > 1 else []:
                out.append(f'<circle cx="{X:.1f}" cy="{ty(y):.1f}" r="2.2" fill="{color}" fill-opacity="0.3"/>')
            if spread > 0:
                y0, y1 = ty(mean - spread), ty(mean + spread)
                out.append(f'<path class="errorbar" data-source="{source}" d="M{X:.1f} {y0:.1f}V{y1:.1f}'
                           f'M{X - 4:.1f} {y0:.1f}h8M{X - 4:.1f} {y1:.1f}h8" stroke="{color}" stroke-width="1.2"/>')
            xv = fmt_value(values[xs.index(x)][1])
            tip = {"rows": f" ± {spread:.2g} (std across {n} rows)",
                   "seeds": f" ± {spread:.2g} (the row's std over seeds)"}.get(source, "")
            out.append(f'<circle class="point" cx="{X:.1f}" cy="{ty(mean):.1f}" r="4" fill="{color}">'
                       f'<title>{_esc(dataset)} · {_esc(name)}={_esc(xv)}: {mean:.4g}{_esc(tip)} (n={n})'
                       f'</title></circle>')
        out.append("</g>")
    legend_y = py0 + 6
    for i, dataset in enumerate(datasets):
        if dataset not in series and dataset not in ceiling_lines:
            continue
        color = _PALETTE[i % len(_PALETTE)]
        out.append(f'<circle cx="{px1 + 16}" cy="{legend_y}" r="4" fill="{color}"/>'
                   f'<text x="{px1 + 26}" y="{legend_y + 4}">{_esc(dataset[:30])}</text>')
        legend_y += 18
        if dataset in ceiling_lines:
            value = ceiling_lines[dataset]
            where = "" if ylo <= value <= yhi else (" (above)" if value > yhi else " (below)")
            out.append(f'<line x1="{px1 + 10}" x2="{px1 + 22}" y1="{legend_y}" y2="{legend_y}" stroke="{color}" '
                       f'stroke-dasharray="4 3"/><text x="{px1 + 26}" y="{legend_y + 4}">human ceiling '
                       f'{value:.4g}{where}</text>')
            legend_y += 18
    out.append("</svg>")
    hashes = sorted(set(rows.loc[data.index, "protocol_hash"]))
    bars = []
    if "rows" in sources:
        bars.append("±1 std across the rows sharing a value where there are several")
    if "seeds" in sources:
        bars.append(f"the row's own ±1 std over evaluation seeds ({metric}{STD_SUFFIX}) where a point is one row")
    caption = (f"{label} by {name}: each point is the mean over the {len(data)} row(s) sharing that value "
               f"(seeds and other axes); error bars: {'; '.join(bars) or 'none (no spread known)'}; "
               f"{'line' if numeric else 'grouped points'} per dataset.")
    if len(hashes) > 1:
        caption += (f" The points span {len(hashes)} protocol hashes ({', '.join(h[:12] for h in hashes)}) that "
                    f"share one scoring hash ({protocol_key['scoring_hash'][:12]}): they differ only in sampler "
                    "settings (steps, CFG, grid, dtype), so they are compared here but ranked in separate tables.")
    fig_id = slug("plot", name, protocol_key["protocol"], protocol_key["scoring_hash"], metric)
    return _figure("axis-plot", fig_id, {
        "axis": name, "metric": metric, "kind": "numeric" if numeric else "categorical",
        "protocol": protocol_key["protocol"], "scoring-hash": _shown_scoring_hash(protocol_key),
        "protocol-hash": " ".join(hashes)}, out, caption)


def _plot_groups(expanded: pd.DataFrame):
    """(key, rows) per (protocol name, scoring key); key = {"protocol", "scoring_hash" (the scoring hash, or
    the protocol hash for rows without protocol_json), "by", "protocol_hashes"}."""
    keys = [scoring_key(t, h) for t, h in zip(expanded["protocol_json"], expanded["protocol_hash"])]
    labels = pd.DataFrame({"protocol": expanded["protocol"].astype(str).to_numpy(),
                           "by": [k[0] for k in keys], "scoring_hash": [k[1] for k in keys]}, index=expanded.index)
    for protocol, by, scoring in sorted(set(map(tuple, labels.to_numpy().tolist()))):
        mask = (labels["protocol"] == protocol) & (labels["by"] == by) & (labels["scoring_hash"] == scoring)
        group = expanded[mask]
        yield {"protocol": protocol, "scoring_hash": scoring, "by": by,
               "protocol_hashes": sorted(set(group["protocol_hash"]))}, group


def axis_plots(df: pd.DataFrame, metric: str = "mauve") -> list[tuple[dict, str, str]]:
    """(plot-group key, axis name, figure HTML) for every axis with more than one scored value within one
    (protocol name, scoring hash) group; see ``_plot_groups`` for the key and ``_axis_plot`` for the bars.
    Floor rows are left out: they have no axes, and lines at their (far lower) scores would flatten the curves;
    the tables rank them and the Gen-PPL–entropy plane shows them. Gen-PPL is never drawn alone: each Gen-PPL
    plot is followed by the unigram entropy over the same axis (when the rows have it)."""
    expanded = expand(df) if len(df) else df
    if not len(expanded):
        return []
    check_metric(expanded, metric)
    metrics = [metric] + (["entropy"] if metric == "gen_ppl" and "entropy" in expanded.columns else [])
    plots = []
    for key, group in _plot_groups(expanded):
        ceilings = group[group["method"].isin(CEILING_METHODS)]
        models = group[~group["method"].isin(CEILING_METHODS | FLOOR_METHODS)]
        datasets = sorted(set(group["dataset"]))
        for axis in axis_columns(group):
            for name in metrics:
                rows = models[models[name].notna()]
                present = [v for v in rows[axis] if not missing(v)]
                if len({_axis_value_key(v) for v in present}) < 2:
                    continue
                plots.append((key, axis[len("axis."):], _axis_plot(rows, ceilings, axis, name, key, datasets)))
    return plots


def _plane_points(rows: pd.DataFrame) -> list[dict]:
    """One point per row with a finite unigram entropy and a positive Gen-PPL, with its CIs where it has them."""
    points = []
    for _, row in rows.iterrows():
        x, y = row.get("entropy"), row.get("gen_ppl")
        if not (is_number(x) and is_number(y) and math.isfinite(x) and math.isfinite(y) and y > 0):
            continue
        method = row["method"]
        kind = "human" if method in CEILING_METHODS else ("floor" if method in FLOOR_METHODS else "model")
        y_ci = row_ci(row, ("gen_ppl" + CI_LOW, "gen_ppl" + CI_HIGH))
        points.append({"row_id": row["row_id"], "kind": kind, "x": float(x), "y": float(y),
                       "x_ci": row_ci(row, ("entropy" + CI_LOW, "entropy" + CI_HIGH)),
                       "y_ci": y_ci if y_ci and y_ci[0] > 0 else None,
                       "label": fmt_value(row["trial"]) if kind != "model" else
                       f"{fmt_value(method)} · {fmt_value(row['trial'])}"})
    return points


def _plane_marker(kind: str, X: float, Y: float, tip: str, css: str = "point") -> str:
    """Models: filled circles; the human ceiling: a filled diamond; floors: hollow squares. ``css``: "point" for
    a row's point, "legend-marker" for the legend's sample (so a count of points never includes the legend)."""
    color, title = _PLANE_STYLE[kind], f"<title>{_esc(tip)}</title>"
    if kind == "human":
        return (f'<path class="{css}" data-kind="human" d="M{X:.1f} {Y - 6:.1f}l6 6l-6 6l-6 -6z" '
                f'fill="{color}">{title}</path>')
    if kind == "floor":
        return (f'<rect class="{css}" data-kind="floor" x="{X - 4.5:.1f}" y="{Y - 4.5:.1f}" width="9" height="9" '
                f'fill="#fff" stroke="{color}" stroke-width="1.8">{title}</rect>')
    return f'<circle class="{css}" data-kind="model" cx="{X:.1f}" cy="{Y:.1f}" r="4" fill="{color}">{title}</circle>'


def _plane_plot(key: dict, dataset: str, rows: pd.DataFrame, points: list[dict]) -> str:
    """One inline SVG: x = unigram entropy, y = Gen-PPL (log scale), one point per row, reference rows
    labelled, CI error bars both ways, and the entropy flag threshold as a dashed vertical line."""
    threshold = entropy_threshold(rows)
    xs = [p["x"] for p in points] + [b for p in points if p["x_ci"] for b in p["x_ci"]]
    xs += [threshold] if threshold is not None else []
    ys = [p["y"] for p in points] + [b for p in points if p["y_ci"] for b in p["y_ci"]]
    xticks, yticks = _nice_ticks(min(xs), max(xs)), _log_ticks(min(ys), max(ys))
    width, height, left, right, top, bottom = 660, 360, 62, 190, 18, 50
    px0, px1, py0, py1 = left, width - right, top, height - bottom

    def tx(x: float) -> float:  # padded, so points on the extreme ticks stay off the frame
        pad = 0.04 * (px1 - px0)
        return px0 + pad + (x - xticks[0]) / (xticks[-1] - xticks[0]) * (px1 - px0 - 2 * pad)

    def ty(y: float) -> float:
        lo, hi = math.log(yticks[0]), math.log(yticks[-1])
        return py1 - (math.log(y) - lo) / (hi - lo) * (py1 - py0)

    x_marks = [f'<line class="grid" x1="{tx(t):.1f}" x2="{tx(t):.1f}" y1="{py0}" y2="{py1}"/>'
               f'<text x="{tx(t):.1f}" y="{py1 + 16}" text-anchor="middle">{_esc(_fmt_tick(t))}</text>' for t in xticks]
    out = _axes("plane-plot-svg", (width, height), (px0, px1, py0, py1), f"Gen-PPL against unigram entropy, {dataset}",
                yticks, ty, x_marks, "unigram entropy", "Gen-PPL (log scale)")
    if threshold is not None:
        X = tx(threshold)
        out.append(f'<line class="threshold" x1="{X:.1f}" x2="{X:.1f}" y1="{py0}" y2="{py1}" stroke="#b3261e" '
                   f'stroke-dasharray="5 4"><title>{ENTROPY_FLAG_RATIO:.0%} of the human row&#x27;s entropy: '
                   f"{threshold:.3g}</title></line>")
    for p in sorted(points, key=lambda p: p["kind"] != "model"):  # reference rows drawn on top
        X, Y, color = tx(p["x"]), ty(p["y"]), _PLANE_STYLE[p["kind"]]
        if p["x_ci"]:
            out.append(f'<path class="errorbar" data-axis="x" d="M{tx(p["x_ci"][0]):.1f} {Y:.1f}'
                       f'H{tx(p["x_ci"][1]):.1f}" stroke="{color}" stroke-width="1.1"/>')
        if p["y_ci"]:
            out.append(f'<path class="errorbar" data-axis="y" d="M{X:.1f} {ty(p["y_ci"][0]):.1f}'
                       f'V{ty(p["y_ci"][1]):.1f}" stroke="{color}" stroke-width="1.1"/>')
        out.append(_plane_marker(p["kind"], X, Y, f"{p['label']}: entropy {p['x']:.4g}, Gen-PPL {p['y']:.4g}"))
        if p["kind"] != "model":  # labelled on the side facing the plot's centre, so it stays inside
            right = X < (px0 + px1) / 2
            out.append(f'<text class="point-label" x="{X + (8 if right else -8):.1f}" y="{Y - 7:.1f}" '
                       f'text-anchor="{"start" if right else "end"}">{_esc(p["label"][:28])}</text>')
    legend = [("model", "model"), ("human", "human ceiling"), ("floor", "floor")]
    for i, (kind, text) in enumerate(k for k in legend if any(p["kind"] == k[0] for p in points)):
        y = py0 + 8 + 20 * i
        marker = _plane_marker(kind, px1 + 18, y, text, "legend-marker")
        out.append(f'{marker}<text x="{px1 + 30}" y="{y + 4}">{_esc(text)}</text>')
    if threshold is not None:
        y = py0 + 8 + 20 * 3
        out.append(f'<line x1="{px1 + 12}" x2="{px1 + 24}" y1="{y}" y2="{y}" stroke="#b3261e" stroke-dasharray="4 3"/>'
                   f'<text x="{px1 + 30}" y="{y + 4}">{ENTROPY_FLAG_RATIO:.0%} of human entropy</text>')
    out.append("</svg>")
    hashes = sorted(set(rows["protocol_hash"]))
    caption = (f"Gen-PPL (log scale) against unigram entropy, {dataset}: one point per row ({len(points)}); "
               "reference rows labelled; error bars: the bootstrap CIs of rows that have them. A low Gen-PPL at low "
               "entropy is degenerate repetition, not fluency")
    caption += (f"; rows left of the dashed line (below {ENTROPY_FLAG_RATIO:.0%} of the human row's entropy) are "
                f"flagged {FLAG_MARK} in the tables." if threshold is not None else ".")
    if len(hashes) > 1:
        caption += (f" The points span {len(hashes)} protocol hashes that share one scoring hash (they differ only "
                    "in sampler settings).")
    fig_id = slug("plane", dataset, key["protocol"], key["scoring_hash"])
    return _figure("plane-plot", fig_id, {"protocol": key["protocol"], "scoring-hash": _shown_scoring_hash(key),
                                          "dataset": dataset, "protocol-hash": " ".join(hashes)}, out, caption)


def entropy_plots(df: pd.DataFrame) -> list[tuple[dict, str, str]]:
    """(plot-group key, dataset, figure HTML): the Gen-PPL–entropy plane of every (protocol name, scoring
    hash) group (as ``axis_plots``) and dataset that has a row with both metrics."""
    expanded = expand(df) if len(df) else df
    if not len(expanded) or "gen_ppl" not in expanded.columns or "entropy" not in expanded.columns:
        return []
    plots = []
    for key, group in _plot_groups(expanded):
        for dataset in sorted(set(group["dataset"])):
            rows = group[group["dataset"] == dataset]
            points = _plane_points(rows)
            if points:
                plots.append((key, dataset, _plane_plot(key, dataset, rows, points)))
    return plots
