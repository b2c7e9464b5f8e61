"""The evaluation protocol every family is scored under: its versioned definition (``protocol``), the two tasks
(``continuation``, ``unconditional``), the shared scoring harness (``harness``) over the metrics (``metrics``),
the must-lose floors (``floors``) and the bootstrap statistics (``significance``).
"""
