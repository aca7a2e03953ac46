"""Charts for people who would rather look than read: PNG or SVG, by the file's suffix.

report: tokens per group (stacked over time with --period); rankings: each week's token share,
stacked to 100%; flows: a heat map of tokens from consumer country to serving country.
matplotlib (Agg, no display) is imported only when a chart is asked for. Labels are client
strings (model, tenant, agent names), so matplotlib's math-text parser is off: a name like
`$\\frac{a}{b}$` or `$\\nosuchcommand$` is drawn as it is written, never parsed (an unknown
command would otherwise stop the drawing with an error).
"""

from __future__ import annotations

import io
import re
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from ..errors import RequestError
from .cells import visible

SUFFIXES = (".png", ".svg")
_OTHERS = 8  # groups beyond this many are drawn together as "other"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, small
    matplotlib.rcParams["text.parse_math"] = False  # labels are client strings: see above
    import matplotlib.pyplot as plt

    return plt


Target = Path | IO[bytes]  # a .png / .svg file, or a buffer that receives SVG


def _check(target: Target) -> None:
    if isinstance(target, Path) and target.suffix.lower() not in SUFFIXES:
        raise RequestError(f"--chart: {target} must end in .png or .svg")


def _save(fig: Any, target: Target) -> None:
    fig.savefig(target, format=target.suffix[1:].lower() if isinstance(target, Path) else "svg")
    _pyplot().close(fig)


_STYLE_ELEMENT = re.compile(r"<style[^>]*>.*?</style>", re.DOTALL)


def svg(draw: Any, *args: Any) -> str:
    """A chart function's drawing as SVG text, to put inline in a page: without the XML
    prolog and doctype, and without matplotlib's <style> element (its one rule is in the
    dashboard's stylesheet, whose CSP admits no other style element)."""
    buffer = io.BytesIO()
    draw(*args, buffer)
    text = buffer.getvalue().decode()
    return _STYLE_ELEMENT.sub("", text[text.index("<svg"):], count=1)


def _label(value: Any) -> str:
    return "(none)" if value in (None, "") else visible(str(value))


def _stacked(series: dict[str, dict[str, float]], columns: list[str], title: str,
             ylabel: str, path: Target) -> None:
    """Stacked bars: one bar per column, one colour per series (largest first)."""
    plt = _pyplot()
    order = sorted(series, key=lambda k: -sum(series[k].values()))
    if len(order) > _OTHERS:
        other: dict[str, float] = defaultdict(float)
        for name in order[_OTHERS:]:
            for col, v in series[name].items():
                other[col] += v
        series = {**{k: series[k] for k in order[:_OTHERS]}, "other": dict(other)}
        order = [*order[:_OTHERS], "other"]
    fig, ax = plt.subplots(figsize=(10, 5.5))
    bottom = [0.0] * len(columns)
    bars = []
    for name in order:
        heights = [series[name].get(c, 0.0) for c in columns]
        bars.append(ax.bar(columns, heights, bottom=bottom))
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    # Labels passed as a list: matplotlib would drop a `label=` that starts with "_".
    ax.legend(bars, order, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    _save(fig, path)


def report_chart(rows: list[dict[str, Any]], by: list[str], period: str | None,
                 path: Target) -> None:
    _check(path)
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        name = " / ".join(_label(r[b]) for b in by) or "all"
        column = r["period"] if period else "tokens"
        series[name][column] = series[name].get(column, 0) + r["input_tokens"] + r["output_tokens"]
    columns = sorted({r["period"] for r in rows}) if period else ["tokens"]
    title = ("Tokens" + (f" by {', '.join(by)}" if by else "")
             + (f" per {period}" if period else ""))
    _stacked(series, columns, title, "tokens (input + output)", path)


def rankings_chart(rows: list[dict[str, Any]], by: str, path: Target) -> None:
    _check(path)
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        series[_label(r[by])][r["week"]] = r["share"] * 100
    weeks = sorted({r["week"] for r in rows})
    _stacked(series, weeks, f"Token share by {by}, week by week", "% of tokens", path)


def index_chart(rows: list[dict[str, Any]], by: str, path: Target) -> None:
    """The price per million reference tokens, week by week: a line per group and currency."""
    _check(path)
    plt = _pyplot()
    series: dict[str, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["price_per_mtok"] is not None:
            name = f"{_label(r[by]) if by != 'all' else 'all'} ({r['currency']})"
            series[name][r["week"]] = float(r["price_per_mtok"])
    weeks = sorted({r["week"] for r in rows})
    fig, ax = plt.subplots(figsize=(10, 5.5))
    order = sorted(series, key=lambda k: -len(series[k]))[:_OTHERS]
    for name in order:
        points = sorted(series[name].items())
        ax.plot([w for w, _ in points], [v for _, v in points], marker="o")
    ax.set_xticks(range(len(weeks)), weeks)
    ax.set_title("Token price index: paid per million tokens (o200k tokens), week by week")
    ax.set_ylabel("price per 1M reference tokens")
    ax.legend(order, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    _save(fig, path)


def flows_chart(rows: list[dict[str, Any]], path: Target) -> None:
    _check(path)
    plt = _pyplot()
    sources = sorted({_label(r["from"]) for r in rows})
    targets = sorted({_label(r["to"]) for r in rows})
    grid = [[0.0] * len(targets) for _ in sources]
    for r in rows:
        grid[sources.index(_label(r["from"]))][targets.index(_label(r["to"]))] += r["tokens"]
    fig, ax = plt.subplots(figsize=(2 + 0.9 * len(targets), 1.5 + 0.6 * len(sources)))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(targets)), targets)
    ax.set_yticks(range(len(sources)), sources)
    ax.set_xlabel("served in")
    ax.set_ylabel("consumed from")
    ax.set_title("Token flows (input + output)")
    low, high = image.get_clim()
    for i, row in enumerate(grid):
        for j, v in enumerate(row):  # dark text on the bright cells, light on the dark ones
            bright = high > low and (v - low) / (high - low) > 0.6
            ax.text(j, i, f"{v:,.0f}", ha="center", va="center", fontsize=8,
                    color="black" if bright else "white")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    _save(fig, path)
