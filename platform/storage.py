"""Run directories on a local disk or on object storage, through one filesystem layer (``pyarrow.fs``).

A run directory given as a URI (``s3://bucket/runs``, ``gs://bucket/runs``: any scheme ``pyarrow.fs`` opens) is
worked on through a node-local mirror, ``$LATENTLM_CACHE/mirror/<scheme>/<bucket>/<key>``. The platform reads and
writes plain local paths; a path under the mirror names the object at the same key (``mirror_path`` and
``remote_uri`` invert each other, on every node that shares the cache location). Three calls move artifacts:

* ``fetch(path)`` before reading what another node may have produced: downloads the file or directory when this
  node's mirror lacks it (``refresh`` re-reads one that can change, such as a manifest);
* ``publish(path)`` after producing it: uploads it (a file is one PUT, atomic on object stores; publish a
  directory's contents before the manifest that marks it complete);
* ``exists(path)``: here or in the store.

On a local run directory all three are no-ops or plain checks. Ray Train checkpoints and Tune experiments need
none of them: they get the URI as their ``storage_path`` (``remote_uri``), and Ray uploads and restores them;
Ray Data reads large shards from the URI. Artifacts are content-addressed and deterministic, so two nodes that
produce the same one upload the same bytes; locks (``lock``) are node-local. The one file with many writers, a
sweep's leaderboard, has a single writer: the sweep driver.

Credentials and endpoints come from each node's environment, as for any ``pyarrow.fs`` client (``AWS_*``
variables or an instance role; ``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO).
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from latentlm.models.config import ConfigError

MIRROR = "mirror"


def is_uri(text: str | os.PathLike) -> bool:
    """``s3://...``-style (a scheme of two or more letters: ``C:\\`` is a Windows drive, not a URI)."""
    scheme = urlparse(os.fspath(text)).scheme
    return len(scheme) > 1 and scheme != "file"


def mirror_root() -> Path:
    from latentlm.platform.data.assets import cache_dir
    return cache_dir() / MIRROR


def mirror_path(uri: str) -> Path:
    """The node-local path a URI is worked on through: ``<mirror>/<scheme>/<bucket>/<key>``."""
    parsed = urlparse(uri)
    key = parsed.path.strip("/")
    return mirror_root() / parsed.scheme / parsed.netloc / key if key else mirror_root() / parsed.scheme / parsed.netloc


def _relative_to_mirror(path: Path) -> tuple[str, str] | None:
    """(scheme, "bucket/key") of a path under the mirror, else None."""
    try:
        parts = Path(os.path.abspath(path)).relative_to(mirror_root()).parts
    except ValueError:
        return None
    if len(parts) < 2:
        return None
    return parts[0], "/".join(parts[1:])


def remote_uri(path: str | os.PathLike) -> str:
    """The URI a mirrored path stands for; any other path, absolute. What Ray's ``storage_path`` and Ray Data's
    readers get, and what leaderboard rows name as a checkpoint."""
    if is_uri(path):
        return os.fspath(path)
    found = _relative_to_mirror(Path(path))
    return f"{found[0]}://{found[1]}" if found else str(Path(path).resolve())


def run_path(run_dir: str | os.PathLike) -> Path:
    """A ``--run-dir`` as the local path the platform works on: a URI's mirror path (after checking that the
    store opens: a one-line ConfigError otherwise, before any cluster resource starts), or the path resolved."""
    if not is_uri(run_dir):
        return Path(run_dir).resolve()
    uri = os.fspath(run_dir).rstrip("/")
    import pyarrow.fs as pafs
    bucket = urlparse(uri).netloc
    if not urlparse(uri).path.strip("/"):  # shared data and stages go to the run dir's parent: keep it in the bucket
        raise ConfigError(f"run_dir {uri}: name a folder inside the bucket, e.g. {uri}/runs")
    try:
        found = _filesystem(urlparse(uri).scheme, bucket).get_file_info(bucket).type != pafs.FileType.NotFound
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError variants: name the field and the reason
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(f"run_dir {uri}: cannot open it as object storage ({reason})") from None
    if not found:
        raise ConfigError(f"run_dir {uri}: the bucket {bucket!r} does not exist (create it first)")
    return mirror_path(uri)


@functools.lru_cache(maxsize=None)
def _filesystem(scheme: str, bucket: str):
    import pyarrow.fs as pafs
    filesystem, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return filesystem


def _remote(path: str | os.PathLike):
    """(filesystem, key) of a mirrored path, else None."""
    found = _relative_to_mirror(Path(path))
    if found is None:
        return None
    scheme, key = found
    return _filesystem(scheme, key.split("/")[0]), key


def _stored_type(path):
    """The ``pyarrow.fs.FileType`` of a mirrored path's key in the store."""
    filesystem, key = _remote(path)
    return filesystem.get_file_info(key).type


def exists(path: str | os.PathLike) -> bool:
    """The file or directory is here, or (a mirrored path) in the store."""
    if Path(path).exists():
        return True
    if _remote(path) is None:
        return False
    import pyarrow.fs as pafs
    return _stored_type(path) != pafs.FileType.NotFound


def lock(path: str | os.PathLike) -> FileLock:
    """A lock beside ``path``: node-local (see the module docstring for why that is enough)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(os.fspath(path) + ".lock")


def fetch(path: str | os.PathLike, refresh: bool = False) -> Path:
    """``path``, downloaded first when it is mirrored and this node lacks it (or ``refresh``: always, for a file
    another node may have rewritten). Missing everywhere: the path, not there (callers test ``is_file``)."""
    path = Path(path)
    remote = _remote(path)
    if remote is None or (path.exists() and not refresh):
        return path
    import pyarrow.fs as pafs
    filesystem, key = remote
    kind = filesystem.get_file_info(key).type
    if kind == pafs.FileType.NotFound:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with lock(path.parent / f".fetch-{path.name}"):
        if path.exists() and not refresh:
            return path
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            target = staging / path.name
            if kind == pafs.FileType.Directory:
                target.mkdir()
            pafs.copy_files(key, str(target), source_filesystem=filesystem,
                            destination_filesystem=pafs.LocalFileSystem())
            if path.is_dir() and kind == pafs.FileType.Directory:
                shutil.rmtree(path)
            os.replace(target, path)  # readers on this node see all of it or none of it
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return path


def publish(path: str | os.PathLike) -> None:
    """Upload a mirrored file or directory (every file under it) to its key; a no-op for other paths."""
    remote = _remote(path)
    if remote is None:
        return
    import pyarrow.fs as pafs
    filesystem, key = remote
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: nothing to publish")
    if path.is_file():
        pafs.copy_files(str(path), key, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not _private(p.relative_to(path))):
        pafs.copy_files(str(file), f"{key}/{file.relative_to(path).as_posix()}",
                        source_filesystem=pafs.LocalFileSystem(), destination_filesystem=filesystem)


def _private(relative: Path) -> bool:
    """Lock files, temp files and fetch staging (dot-names) stay on the node."""
    return any(part.startswith(".") or part.endswith(".lock") for part in relative.parts)


def delete(path: str | os.PathLike) -> None:
    """Remove a file here and (mirrored) in the store."""
    Path(path).unlink(missing_ok=True)
    remote = _remote(path)
    if remote is not None:
        import pyarrow.fs as pafs
        filesystem, key = remote
        if _stored_type(path) == pafs.FileType.File:
            filesystem.delete_file(key)


def total_bytes(path: str | os.PathLike, suffix: str = "") -> int:
    """Bytes of a file, or of the files under a directory ending in ``suffix``: read from the store when the
    mirror lacks them (how a driver sizes shards it may never download)."""
    path = Path(path)
    if path.exists():
        files = [path] if path.is_file() else [p for p in path.rglob(f"*{suffix}") if p.is_file()]
        return sum(p.stat().st_size for p in files)
    remote = _remote(path)
    if remote is None:
        return 0
    import pyarrow.fs as pafs
    filesystem, key = remote
    info = filesystem.get_file_info(key)
    if info.type == pafs.FileType.File:
        return info.size
    found = filesystem.get_file_info(pafs.FileSelector(key, recursive=True, allow_not_found=True))
    return sum(i.size for i in found if i.type == pafs.FileType.File and i.path.endswith(suffix))


def local_path(text: str | os.PathLike) -> Path:
    """A URI's mirrored path on this node; any other path as it is."""
    return mirror_path(os.fspath(text)) if is_uri(text) else Path(text)


def portable(config: dict) -> dict:
    """A Ray Train loop config with its mirrored paths (top-level values) as URIs: the worker's node may keep its
    mirror elsewhere (``localize`` turns them back)."""
    return {name: remote_uri(value) if isinstance(value, str) and value and _relative_to_mirror(Path(value)) else value
            for name, value in config.items()}


def localize(config: dict, write_only: tuple[str, ...] = ("run_dir",)) -> dict:
    """The worker's side of ``portable``: URIs as this node's mirrored paths, each fetched (earlier stages'
    checkpoints, the vocabulary, statistics: a worker on another node than the trial's has none of them yet)
    except the ``write_only`` directories the loop writes into (the run dir)."""
    out = dict(config)
    for name, value in config.items():
        if isinstance(value, str) and is_uri(value):
            out[name] = str(local_path(value) if name in write_only else fetch(local_path(value)))
    return out
