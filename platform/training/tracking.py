"""Weights & Biases tracking: offline by default (no network, runs land under the run directory for a
later ``wandb sync``), online when WANDB_API_KEY is set. Only rank 0 logs, with an explicit run id
(Ray's ``setup_wandb`` misbehaves in Train V2 workers; see shared/stack-probe.md §6)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


class Tracker:
    def __init__(self, run=None):
        self.run = run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


def start_tracking(enabled: bool, is_main: bool, *, project: str, group: str, name: str, directory: Path,
                   config: dict[str, Any]) -> Tracker:
    if not (enabled and is_main):
        return Tracker()
    import wandb
    mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # W&B run ids allow letters, digits, '-' and '_' only; the id makes a restarted stage resume its run
    run_id = re.sub(r"[^A-Za-z0-9_-]", "_", f"{group}-{name}")[-120:]
    run = wandb.init(project=project, group=group, name=name, id=run_id, resume="allow", dir=str(directory),
                     mode=mode, config=config, reinit="finish_previous")
    return Tracker(run)
