"""Leaderboards: one row per (evaluated trial, eval dataset) in one Parquet file, merged across sweeps and
machines without duplicates, rendered as Markdown and as one self-contained HTML page.

Modules, one job each:
    schema     the row schema, row identity (hashes, canonical JSON) and ``make_rows`` with its checks
    store      reading, checking, merging and (locked, atomic) writing of leaderboard files: ``Leaderboard``
    cells      how a value reads in a cell (labels, x100 scale, ``mean ± std``, ``value [low, high]``)
    tables     what both renderers share: expanded frame, grouping, ranking, columns, metric cells, entropy flag
    marks      significance marks (ties with the best model row) and the legends under a table
    markdown   ``to_markdown``
    compare    ``find_row`` / ``compare_rows`` / ``format_comparison`` behind ``latentlm compare``
    plots      the inline SVG charts (per ablation axis; the Gen-PPL–entropy plane)
    html       ``html_page`` / ``to_html`` / ``render`` from ``templates/`` with ``static/`` CSS and JS inlined
"""
from .cells import METRIC_LABELS, PERCENT_METRICS, PERCENT_SPREADS
from .compare import (COMPARE_ORDER, Comparison, check_compare_options, compare_rows, find_row, format_comparison,
                      human_entropy_threshold, row_label)
from .html import html_page, render, to_html
from .markdown import MARKDOWN_HIDDEN, to_markdown
from .marks import BEST_MARK, SIGNIFICANCE_ALPHA, SIGNIFICANCE_REPLICATES, SIGNIFICANCE_SEED, TIE_MARK, evidence_metrics
from .plots import axis_plots, entropy_plots
from .schema import (CEILING_METHODS, CI_HIGH, CI_LOW, COLUMNS, FILENAME, FLOOR_METHODS, JSON_COLUMNS, METRICS,
                     REQUIRED, SCHEMA, SCHEMA_KEY, SCHEMA_VERSION, STD_SUFFIX, LeaderboardError, canonical_json,
                     check_evidence, check_progression, config_hash, make_row_id, make_rows, protocol_json,
                     scoring_key, utc_now)
from .store import Leaderboard, combine, empty_frame, read, resolve_path, write_rows
from .tables import CURATED_EXTRAS, ENTROPY_FLAG_RATIO, FLAG_MARK, axis_columns, expand, metric_columns

# Internals the tests reach for under these names: rows to a checked frame, the Arrow table written, the cache
# of the significance marks, and the cell formatting.
from .cells import fmt_metric as _fmt_metric, fmt_metric_ci as _fmt_metric_ci
from .cells import fmt_metric_std as _fmt_metric_std, metric_label as _metric_label
from .marks import _tied_with_best
from .store import _normalise, _to_table

__all__ = [
    "BEST_MARK", "CEILING_METHODS", "CI_HIGH", "CI_LOW", "COLUMNS", "COMPARE_ORDER", "CURATED_EXTRAS",
    "ENTROPY_FLAG_RATIO", "FILENAME", "FLAG_MARK", "FLOOR_METHODS", "JSON_COLUMNS", "MARKDOWN_HIDDEN", "METRICS",
    "METRIC_LABELS", "PERCENT_METRICS", "PERCENT_SPREADS", "REQUIRED", "SCHEMA", "SCHEMA_KEY", "SCHEMA_VERSION",
    "SIGNIFICANCE_ALPHA", "SIGNIFICANCE_REPLICATES", "SIGNIFICANCE_SEED", "STD_SUFFIX", "TIE_MARK", "Comparison",
    "Leaderboard", "LeaderboardError", "axis_columns", "axis_plots", "canonical_json", "check_compare_options",
    "check_evidence", "check_progression", "combine", "compare_rows", "config_hash", "empty_frame", "entropy_plots",
    "evidence_metrics", "expand", "find_row", "format_comparison", "html_page", "human_entropy_threshold",
    "make_row_id", "make_rows", "metric_columns", "protocol_json", "read", "render", "resolve_path", "row_label",
    "scoring_key", "to_html", "to_markdown", "utc_now", "write_rows",
]
