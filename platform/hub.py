"""Final checkpoints the way the Hugging Face ecosystem expects: ``from_pretrained(<directory or hub id>)``,
``export_checkpoint`` (the ``save_pretrained`` of a trained run) and ``push_to_hub``.

A final checkpoint directory already is what a hub repository holds: ``config.json`` (the resolved experiment
config), ``state.json`` (its stage, which names the family) and one safetensors file per module. An export keeps
exactly those, plus a model card and any checkpoint a family's generator also reads (LDLM's post-trained decoder
reads its joint stage, bundled as ``joint/``). Training-only files stay behind: DeepSpeed's resume shards (its own
``torch.save`` pickles), the optimizer and the per-rank RNG streams. Loading downloads JSON and safetensors only,
so nothing is ever unpickled, and hands the directory to the family's loader (``MethodSpec.load_generator``).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from latentlm.models.checkpoint import read_json

from . import registry

# what a published checkpoint may hold, at its top level and in a bundled checkpoint's folder
PUBLISHED = ("*.json", "*.safetensors", "README.md")
TRAINING_ONLY = ("optimizer*.safetensors", "rng_*.safetensors")


def is_local(name_or_path: str | Path) -> bool:
    """A path rather than a hub id (``name`` or ``org/name``)."""
    text = str(name_or_path)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text


def resolve_checkpoint(name_or_path: str | Path, revision: str | None = None, token: str | None = None,
                       cache_dir: str | None = None) -> Path:
    """A local checkpoint directory, one on object storage (``s3://...``, as leaderboard rows name it) fetched to
    this node's mirror, or a hub repository downloaded (JSON and safetensors files only)."""
    from . import storage
    if storage.is_uri(name_or_path):
        path = storage.fetch(storage.local_path(name_or_path))
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {name_or_path}: no such directory in the store")
        return path
    if is_local(name_or_path):
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {name_or_path}: no such directory")
        return path
    from huggingface_hub import snapshot_download
    patterns = [*PUBLISHED, *(f"*/{p}" for p in PUBLISHED)]
    return Path(snapshot_download(repo_id=str(name_or_path), revision=revision, token=token, cache_dir=cache_dir,
                                  allow_patterns=patterns))


def from_pretrained(name_or_path: str | Path, use_ema: bool = True, device: str = "cpu", revision: str | None = None,
                    token: str | None = None, cache_dir: str | None = None):
    """The generator of a final checkpoint (any registered family), from a directory or a hub repository."""
    from .reevaluate import checkpoint_method
    directory = resolve_checkpoint(name_or_path, revision, token, cache_dir)
    return registry.get(checkpoint_method(directory)).load_generator(directory, use_ema, device)


def _published(path: Path) -> bool:
    return any(fnmatch(path.name, p) for p in PUBLISHED) and not any(fnmatch(path.name, p) for p in TRAINING_ONLY)


def _copy_published(source: Path, target: Path) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_file() and _published(path) and path.name != "README.md":
            shutil.copy2(path, target / path.name)
            copied.append(path.name)
    return copied


def model_card(method: registry.MethodSpec, checkpoint: Path, repo_id: str | None) -> str:
    state = read_json(checkpoint / "state.json")
    config = read_json(checkpoint / "config.json")
    name = repo_id or "<directory or hub id>"
    lines = ["---", "library_name: latentlm", "tags:", "- latentlm", f"- {method.name}", "- text-generation",
             "---", "", f"# {method.label}: {config.get('name', checkpoint.name)}", "",
             f"A {method.label} checkpoint ({method.summary}) trained with latentlm: stage `{state['stage']}`, "
             f"step {state.get('step', '?')}, tokenizer `{config.get('data', {}).get('tokenizer', '?')}`.",
             "The files are safetensors and JSON only; `config.json` holds the resolved experiment config.", "",
             "```python", "from latentlm.platform.hub import from_pretrained", "",
             f"generator = from_pretrained({name!r})", "```", "",
             f"or `latentlm sample {name}` from the command line."]
    metrics = checkpoint / "eval" / "metrics.json"
    if metrics.is_file():
        scored = json.loads(metrics.read_text())
        lines += ["", f"## Evaluation (`{scored['protocol']['name']}`, protocol hash "
                      f"`{scored['protocol']['hash']}`)", "", "```json",
                  json.dumps(scored.get("results", {}), indent=2, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, repo_id: str | None = None) -> Path:
    """Write the publishable part of a final checkpoint to ``out_dir`` (which must not exist yet): its JSON and
    safetensors files minus training-only ones, every checkpoint its generator also reads, and a model card."""
    from .reevaluate import checkpoint_method
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    method = registry.get(checkpoint_method(checkpoint))
    if out_dir.exists():
        raise FileExistsError(f"export directory {out_dir} already exists; choose a new one")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if out_dir.parent.is_dir() else None))
    try:
        _copy_published(checkpoint, staging)
        for folder, source in method.bundled(checkpoint).items():
            _copy_published(Path(source), staging / folder)
        (staging / "README.md").write_text(model_card(method, checkpoint, repo_id))
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(out_dir))  # complete or absent, never half-written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def push_to_hub(checkpoint: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                revision: str | None = None, commit_message: str | None = None):
    """Upload a final checkpoint's export (``export_checkpoint``) to hub repository ``repo_id``, creating it if
    needed. Returns the hub's commit info."""
    from huggingface_hub import HfApi
    checkpoint = Path(checkpoint)
    with tempfile.TemporaryDirectory(prefix="latentlm_push_") as tmp:
        folder = export_checkpoint(checkpoint, Path(tmp) / "export", repo_id)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision,
                                 commit_message=commit_message or f"latentlm checkpoint {checkpoint.name}")
