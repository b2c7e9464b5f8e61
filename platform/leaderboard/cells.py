"""How one value reads in a table cell: metric labels, the x100 scale of percent metrics, ``mean ± std`` and
``value [low, high]`` cells, seconds, and the text of any other column."""
from __future__ import annotations

import math
import numbers
import re
from typing import Any

from .schema import canonical_json

PERCENT_METRICS = frozenset(("rouge1", "rouge2", "rougeL", "bertscore", "mauve", "recon_acc"))  # shown x100
PERCENT_SPREADS = frozenset(("mauve_kmeans_std", "mauve_sampling_std"))  # spreads of MAUVE: shown x100 too
METRIC_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bertscore": "BERTScore",
                 "mauve": "MAUVE", "recon_acc": "recon acc", "gen_tokens": "gen tokens",
                 "gen_ppl": "Gen-PPL", "entropy": "entropy", "diversity": "diversity",
                 "mauve_kmeans_std": "MAUVE k-means std", "mauve_sampling_std": "MAUVE sampling std"}


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not (
        isinstance(value, float) and math.isnan(value))


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt_metric(name: str, value: Any) -> str:
    if missing(value):
        return ""
    value = float(value)
    if name in PERCENT_METRICS or name in PERCENT_SPREADS:
        return f"{100 * value:.2f}"
    if name == "gen_tokens":
        return f"{value:.1f}"
    # four significant digits; a value they round keeps its trailing zeros: an entropy of 2.9998 reads 3.000
    # (and its CI keeps those decimals), not 3 [3, 3], while an exact 80 stays 80
    text = f"{value:.4g}"
    return text if float(text) == value else f"{value:#.4g}".rstrip(".")


def _decimals(text: str) -> int | None:
    """Decimals of a plain number as formatted (None for exponent notation)."""
    match = re.fullmatch(r"-?\d+(?:\.(\d+))?", text)
    return len(match.group(1) or "") if match else None


def fmt_metric_std(name: str, value: Any, std: Any) -> str:
    """``mean ± std``: the std scaled like its metric (x100 for ``PERCENT_METRICS``) and printed with the
    mean's decimals; just the mean when there is no std."""
    text = fmt_metric(name, value)
    if not text or missing(std):
        return text
    spread = (100.0 if name in PERCENT_METRICS else 1.0) * abs(float(std))
    digits = _decimals(text)
    return f"{text} ± {spread:.{digits}f}" if digits is not None else f"{text} ± {spread:.2g}"


def fmt_metric_ci(name: str, value: Any, low: Any, high: Any) -> str:
    """``value [low, high]``: the bounds scaled like the metric (x100 for ``PERCENT_METRICS``) and printed
    with the value's decimals; just the value when a bound is missing."""
    text = fmt_metric(name, value)
    if not text or missing(low) or missing(high):
        return text
    scale = 100.0 if name in PERCENT_METRICS else 1.0
    digits = _decimals(text)
    spec = f".{digits}f" if digits is not None else ".3g"
    low, high = (f"{scale * float(b):{spec}}" for b in (low, high))
    return f"{text} [{low}, {high}]"


def fmt_value(value: Any) -> str:
    if missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return canonical_json(value)
    return str(value)


def fmt_seconds(value: Any) -> str:
    if missing(value):
        return ""
    value = float(value)
    if value < 120:
        return f"{value:.0f} s"
    return f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"
