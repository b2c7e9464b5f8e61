"""Checks of task files and local task data, run before lm-eval sees them, so that a bad file fails in one line
naming the file (and line) and the field, not deep inside a Hugging Face ``datasets`` or lm-eval traceback.

Local task data is JSON Lines, one document per line, in one of the ``LOCAL_FORMATS``:

* ``mcq``: ``{"context": str, "options": [str, ...] (>= 2), "answer": int (index of the gold option)}``;
* ``lastword``: ``{"context": str (the passage before the word), "answer": str (the word)}``.

Extra fields (``id``, ``doc_index``, ``prompt_tokens``) are allowed. A task YAML that reads local data names its
format and file either the way the offline builder writes them (``custom_dataset: !function ...hooks.load_local``
with ``dataset_kwargs: {data_file, local_format}``) or the plain lm-eval way (``dataset_path: json``,
``dataset_kwargs: {data_files: ...}``) with ``metadata: {local_format: mcq}``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .items import FewshotDataError

LOCAL_FORMATS: dict[str, dict[str, type]] = {
    "mcq": {"context": str, "options": list, "answer": int},
    "lastword": {"context": str, "answer": str},
}
REQUIRED_TASK_KEYS = ("task", "output_type", "doc_to_text")


def _check_row(row: Any, where: str, local_format: str) -> None:
    fields = LOCAL_FORMATS[local_format]
    if not isinstance(row, dict):
        raise FewshotDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name, kind in fields.items():
        if name not in row:
            raise FewshotDataError(f"{where}: missing field {name!r} (a {local_format} row needs "
                                   f"{', '.join(fields)})")
        value = row[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise FewshotDataError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
    if not row["context"].strip():
        raise FewshotDataError(f"{where}: field 'context' is empty")
    if local_format == "mcq":
        options = row["options"]
        if len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
            raise FewshotDataError(f"{where}: field 'options' must hold >= 2 non-empty strings, got {options!r}")
        if not 0 <= row["answer"] < len(options):
            raise FewshotDataError(f"{where}: field 'answer' must index the {len(options)} options, got "
                                   f"{row['answer']!r}")
    elif not row["answer"].strip():
        raise FewshotDataError(f"{where}: field 'answer' is empty")


def check_rows(path: str | Path, local_format: str) -> list[dict]:
    """The rows of a local JSONL task file, each checked against ``local_format``; a one-line
    ``FewshotDataError`` naming ``path:line`` and the field otherwise."""
    if local_format not in LOCAL_FORMATS:
        raise FewshotDataError(f"{path}: local_format must be one of {', '.join(LOCAL_FORMATS)}, got "
                               f"{local_format!r}")
    path = Path(path)
    if not path.is_file():
        raise FewshotDataError(f"{path}: no such task data file")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise FewshotDataError(f"{where}: not valid JSON ({err.msg})") from None
            _check_row(row, where, local_format)
            rows.append(row)
    if not rows:
        raise FewshotDataError(f"{path}: no rows (expected one JSON object per line)")
    return rows


@dataclass(frozen=True)
class TaskFile:
    """A checked task YAML: its task name, and its local data files with their format (none for hub data)."""
    path: Path
    task: str
    config: dict
    local_format: str | None = None
    data_files: tuple[Path, ...] = ()


def _data_files(kwargs: dict, where: str) -> tuple[Path, ...]:
    files = kwargs.get("data_file", kwargs.get("data_files"))
    if isinstance(files, dict):
        files = [f for value in files.values() for f in (value if isinstance(value, list) else [value])]
    files = [files] if isinstance(files, str) else files
    if not files or not all(isinstance(f, str) for f in files):
        raise FewshotDataError(f"{where}: dataset_kwargs must name the local data (data_file or data_files), got "
                               f"{kwargs!r}")
    return tuple(Path(f) for f in files)


def check_task_file(path: str | Path) -> TaskFile:
    """Load a task YAML (``include`` resolved, ``!function`` not imported), check the keys every task needs and,
    when it reads local data with a declared format, every row of that data."""
    import yaml
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(path)
    try:
        config = load_yaml(path, resolve_func=False)
    except OSError as err:
        raise FewshotDataError(f"{path}: cannot read the task file ({err.strerror or err})") from None
    except (yaml.YAMLError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FewshotDataError(f"{path}: not a task YAML ({first})") from None
    for key in REQUIRED_TASK_KEYS:
        if key not in config:
            raise FewshotDataError(f"{path}: missing field {key!r} (a task file needs {', '.join(REQUIRED_TASK_KEYS)})")
    kwargs = config.get("dataset_kwargs") or {}
    metadata = config.get("metadata") or {}
    local_format = kwargs.get("local_format", metadata.get("local_format"))
    if local_format is None:
        return TaskFile(path, str(config["task"]), config)
    files = _data_files(kwargs, f"{path}")
    for file in files:
        check_rows(file, local_format)
    return TaskFile(path, str(config["task"]), config, local_format, files)


def task_files(directories) -> dict[str, Path]:
    """``{task name: YAML path}`` of the task YAMLs under ``directories`` (later directories win, as in lm-eval).
    Files that are not tasks (groups, templates) are left out."""
    from lm_eval.tasks._yaml_loader import load_yaml

    found = {}
    for directory in directories:
        for path in sorted(Path(directory).glob("**/*.yaml")):
            try:
                config = load_yaml(path, resolve_func=False)
            except Exception:  # lm-eval skips unreadable YAMLs while indexing; check_task_file names them
                continue
            if isinstance(config, dict) and isinstance(config.get("task"), str):
                found[config["task"]] = path
    return found
