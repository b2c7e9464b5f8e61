"""Few-shot results as leaderboard rows: one row per task, protocol ``fewshot/<task>``.

The same identity rules as the continuation rows (``sweep.add_rows``): ``leaderboard.make_rows`` keys a row by
(method, protocol hash, dataset, config hash, seed), so re-running a trial anywhere replaces its row; the caller
passes the config that defines the model (``sweep.result_identity(cfg)``), not machine-local paths. Per row:
``dataset`` is the task's data (``embedded:wiki``, ``hf:cais/mmlu:all``), ``metrics_json`` holds the accuracy (or
``exact_match``) with ``_ci_low`` / ``_ci_high`` and ``samples`` (n), ``protocol_json`` the ``FewshotProtocol``
with both hashes, and ``evidence_json`` the per-item 0/1 vector that ``latentlm compare`` and the tables' ≈ marks
resample (paired by item across rows of one scoring hash).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from latentlm.platform import leaderboard

from .runner import TaskResult


def fewshot_rows(results: Mapping[str, TaskResult], *, method: str, trial: str, config: Mapping[str, Any] | Any,
                 seed: int, checkpoint: str | os.PathLike | None, sweep: str = "fewshot",
                 axes: Mapping[str, Any] | None = None, compute_seconds: float | None = None,
                 machine: str | None = None, created_at: str | None = None) -> list[dict]:
    """Leaderboard rows of ``run_fewshot``'s results for one evaluated model (``method``, ``trial``, ``config``,
    ``seed``, ``checkpoint``), checked by ``leaderboard.make_rows``."""
    if not results:
        raise leaderboard.LeaderboardError("results: expected at least one few-shot task result")
    rows = []
    for result in results.values():
        protocol = result.protocol
        rows += leaderboard.make_rows(
            method=method, sweep=sweep, trial=trial, axes=axes, results={protocol.dataset: result.metrics()},
            protocol=protocol.name, protocol_hash=protocol.hash, seed=seed, compute_seconds=compute_seconds,
            checkpoint=checkpoint, config=config, machine=machine, created_at=created_at,
            protocol_info=protocol.to_dict(), evidences={protocol.dataset: result.evidence})
    return rows
