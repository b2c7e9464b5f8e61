"""Wait for a multi-node cluster's nodes before training (``resources.min_nodes``).

Without it, a job whose workers need more nodes than have joined does not fail: Ray Train's placement group stays
pending and the job waits forever (a node whose ``ray start --address`` points at the wrong head, a node an
autoscaler never gets). ``wait_for_nodes`` polls the connected cluster until enough nodes are alive and otherwise
fails after a bounded wait, with a one-line error that names the config field.
"""
from __future__ import annotations

import logging
import time

from latentlm.models.config import ConfigError

log = logging.getLogger(__name__)


def alive_nodes() -> list[dict]:
    """The connected cluster's alive nodes (``ray.nodes()`` entries)."""
    import ray
    return [node for node in ray.nodes() if node.get("Alive")]


def wait_for_nodes(expected: int, timeout_s: float, poll_s: float = 1.0) -> int:
    """Block until the connected cluster has at least ``expected`` alive nodes; return how many it has.

    Raises ``ConfigError`` (one line, naming ``resources.min_nodes``) when fewer have joined after ``timeout_s``
    seconds. Progress is logged every 30 s of waiting."""
    start = last_log = time.monotonic()
    while True:
        joined = len(alive_nodes())
        waited = time.monotonic() - start
        if joined >= expected:
            if waited >= poll_s:
                log.info("%d of %d nodes joined after %.0f s", joined, expected, waited)
            return joined
        if waited >= timeout_s:
            raise ConfigError(f"resources.min_nodes: {expected} nodes expected, {joined} joined after {waited:.0f} s "
                              f"(resources.nodes_timeout_s = {timeout_s:g}); start the missing nodes with "
                              f"`ray start --address=<head>:<port>`, or lower resources.min_nodes")
        if time.monotonic() - last_log >= 30:
            log.info("waiting for nodes: %d of %d joined after %.0f s (at most %g s)", joined, expected, waited,
                     timeout_s)
            last_log = time.monotonic()
        time.sleep(max(0.0, min(poll_s, timeout_s - waited)))


def wait_for_min_nodes(resources) -> None:
    """``wait_for_nodes`` for a ``ResourcesConfig``; nothing when it is None or its ``min_nodes`` is 0."""
    if resources is not None and resources.min_nodes > 0:
        wait_for_nodes(resources.min_nodes, resources.nodes_timeout_s)
