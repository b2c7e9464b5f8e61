"""Stage plumbing every family's pipeline shares. Stages are content-addressed: a stage's key hashes every
config section that can change its output, and ``StageCache`` records the checkpoint a key produced under
``<root>/artifacts``, so a re-run of an interrupted pipeline, and every sweep trial that shares a stage, reuses
it instead of training it again. On a run dir on object storage (``platform/storage.py``) the records and the
checkpoints they name live in the store, so a trial on any node finds what another node trained.
``Trained`` is what a family's ``train`` returns.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from latentlm.models.checkpoint import read_json, write_json
from latentlm.platform import storage
from latentlm.platform.data.windows import DataArtifacts

log = logging.getLogger(__name__)


class StageCache:
    """Records which checkpoint a stage key produced; concurrent trials needing the same key wait for the
    first one instead of training it twice."""

    def __init__(self, root: Path):
        self.root = Path(root) / "artifacts"
        self.root.mkdir(parents=True, exist_ok=True)
        # reference rows (human ceiling, floors) and reference features, shared by every trial like checkpoints
        self.ceiling_dir = self.root / "references"

    def get_or_run(self, stage: str, key: str, run) -> tuple[str, float]:
        """The stage's checkpoint directory, present on this node (fetched from the store when another node
        trained it), and the seconds this call spent training it (0: reused)."""
        record_path = self.root / f"{stage}-{key}.json"
        with storage.lock(record_path):
            if storage.fetch(record_path).is_file():
                record = read_json(record_path)
                checkpoint = storage.local_path(record["checkpoint"])
                if storage.exists(checkpoint):
                    log.info("stage %s %s reused: %s", stage, key, record["checkpoint"])
                    return str(storage.fetch(checkpoint)), 0.0
            t0 = time.time()
            checkpoint = run()
            seconds = round(time.time() - t0, 1)
            write_json(record_path, {"stage": stage, "key": key, "checkpoint": storage.remote_uri(checkpoint),
                                     "seconds": seconds})
            storage.publish(record_path)
            return str(storage.fetch(checkpoint)), seconds


@dataclass
class Trained:
    """A family's training stages, done: what its evaluation (and the identical-loss check) needs."""
    checkpoints: dict[str, str | None]  # stage -> checkpoint directory, in training order
    stage_seconds: dict[str, float]
    facts: dict
    artifacts: DataArtifacts
    cache: StageCache
