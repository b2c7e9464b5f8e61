"""Results tables: one row per (run, eval dataset), written as CSV and Markdown, printed as text."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from latentlm.models.checkpoint import atomic_write_text

METRIC_COLUMNS = [("recon_acc", "recon acc"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"), ("rougeL", "ROUGE-L"),
                  ("bertscore", "BERTScore"), ("mauve", "MAUVE")]


def flatten(run_name: str, axes: dict, results: dict[str, dict[str, float]]) -> list[dict]:
    return [{"run": run_name, **axes, "dataset": dataset, **values} for dataset, values in results.items()]


def to_markdown(rows: list[dict], key_columns: list[str]) -> str:
    headers = key_columns + [label for _, label in METRIC_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [str(row.get(k, "")) for k in key_columns]
        cells += [f"{100 * row[m]:.2f}" if m in row else "" for m, _ in METRIC_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_tables(rows: list[dict], key_columns: list[str], directory: Path, stem: str = "results") -> tuple[Path, Path]:
    directory = Path(directory)
    csv_path, md_path = directory / f"{stem}.csv", directory / f"{stem}.md"
    atomic_write_text(csv_path, to_csv(rows))
    atomic_write_text(md_path, to_markdown(rows, key_columns))
    return csv_path, md_path
