"""Progress of long phases as log lines: tqdm's counting, rate and ETA, written through ``logging`` at most
every ``interval`` seconds, so a phase that runs for minutes inside a Ray worker still reports what it is
doing and how far it is (worker logs reach the driver's console line by line; a redrawn bar would not)."""
from __future__ import annotations

import logging

from tqdm import tqdm

INTERVAL_S = 15.0
FORMAT = "%(asctime)s %(name)s: %(message)s"


def configure_logging() -> None:
    """latentlm's INFO lines on stderr in this process (a Ray actor, e.g. a Tune trial, starts with no handler
    for them, so its progress would be silent); idempotent."""
    logger = logging.getLogger("latentlm")
    logger.setLevel(logging.INFO)
    if not any(getattr(h, "_latentlm", False) for h in logger.handlers) and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._latentlm = True
        logger.addHandler(handler)
        logger.propagate = False  # a library configuring the root logger later must not print every line twice


class _LogStream:
    """A file-like sink for tqdm: every refresh becomes one log line."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> None:
        line = text.strip("\r\n ")
        if line:
            self.logger.info(line)

    def flush(self) -> None:
        pass


def progress(total: int, desc: str, logger: logging.Logger, unit: str = "it", interval: float = INTERVAL_S) -> tqdm:
    """A tqdm counter over ``total`` units that logs ``desc: 40%|####  | 51/128 [00:12<00:18, 4.1it/s]``."""
    return tqdm(total=total, desc=desc, unit=unit, file=_LogStream(logger), mininterval=interval, maxinterval=interval,
                ascii=True, ncols=100)
