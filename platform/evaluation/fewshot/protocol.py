"""The identity of a few-shot result: protocol ``fewshot/<task>``, its version and its hash.

Rows are ranked and paired only within one protocol name *and* hash (the leaderboard's rule), so the hash must
change whenever a number could: it covers the task's definition (dataset and split or the local data's sha256,
shots, options, anchor, delimiters, generation settings, metric), the scorer (``SCORER_VERSION`` and its rule
texts), the item count and ``limit``, and the sha256 of every rendered prompt and target in document order,
which pins the templates, the hand-written demonstrations, the option order and the documents themselves. It
leaves out what is machine-local (file paths). ``sampler`` holds how the model sampled (steps, CFG scale, seed,
batch size): part of ``hash``, not of ``scoring_hash``, so rows that differ only there can still be plotted on
one axis and compared (they saw the same prompts), as with the continuation protocol, whose digest, hashes and
``to_dict`` (``EvalProtocol``'s) this protocol uses over its own body.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from latentlm.platform.leaderboard.schema import canonical_json, sha256_hex

from ..protocol import EvalProtocol
from . import scoring

PREFIX = "fewshot"
SAMPLER_KEYS = ("steps", "cfg_scale", "seed", "batch_size", "grid", "dtype", "conditional")  # conditional: False = LDLM
SCORER = {"version": scoring.SCORER_VERSION, "rules": {"mcq": scoring.MCQ_RULE, "lastword": scoring.LASTWORD_RULE,
                                                      "exact_match": scoring.EXACT_MATCH_RULE}}


def _sha(texts: Sequence[str]) -> str:
    return sha256_hex(canonical_json(list(texts)))


@dataclass(frozen=True)
class FewshotProtocol:
    task: str
    version: int | str
    definition: dict          # dataset, source, shots, options, anchor, delimiters, generation, metric, scorer
    items: dict               # n, limit, prompts_sha256, targets_sha256
    scoring: dict = field(default_factory=dict)   # ci_level, bootstrap_replicates, bootstrap_seed (the intervals)
    sampler: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{PREFIX}/{self.task}"

    @property
    def dataset(self) -> str:
        return str(self.definition["dataset"])

    def _body(self, with_sampler: bool) -> dict:
        body = {"name": self.name, "version": self.version, "task": self.task, "definition": self.definition,
                "items": self.items, "scoring": self.scoring}
        return {**body, "sampler": self.sampler} if with_sampler else body

    # the continuation protocol's identity over this body: the same digest, hash / scoring_hash and protocol_json
    hash = EvalProtocol.hash
    scoring_hash = EvalProtocol.scoring_hash
    to_dict = EvalProtocol.to_dict

    @classmethod
    def from_run(cls, task: str, config: Mapping[str, Any], prompts: Sequence[str], targets: Sequence[str],
                 limit: int | float | None, scoring: Mapping[str, Any] | None = None,
                 sampler: Mapping[str, Any] | None = None) -> "FewshotProtocol":
        """The protocol of one task of an lm-eval run: ``config`` is ``results["configs"][task]``, ``prompts`` and
        ``targets`` the logged samples' in document order, ``scoring`` the interval settings."""
        metadata = dict(config.get("metadata") or {})
        kwargs = config.get("dataset_kwargs") or {}
        source = {"path": config.get("dataset_path"), "name": config.get("dataset_name"),
                  "split": config.get("test_split") or config.get("validation_split"),
                  "data_sha256": metadata.get("data_sha256"), "local_format": kwargs.get("local_format")}
        generation = dict(config.get("generation_kwargs") or {})
        metric_list = config.get("metric_list") or [{}]
        definition = {
            "dataset": metadata.get("dataset") or ":".join(str(p) for p in (source["path"], source["name"]) if p),
            "source": source, "shots": config.get("num_fewshot"), "options": metadata.get("options"),
            "anchor": metadata.get("anchor"), "target_delimiter": config.get("target_delimiter"),
            "fewshot_delimiter": config.get("fewshot_delimiter"), "output_type": config.get("output_type"),
            "generation": {"until": generation.get("until"), "max_gen_toks": generation.get("max_gen_toks")},
            "metric": metric_list[0].get("metric"), "scorer": SCORER,
        }
        items = {"n": len(prompts), "limit": limit, "prompts_sha256": _sha(prompts), "targets_sha256": _sha(targets)}
        version = metadata.get("version", 0)
        return cls(task, version, definition, items, dict(scoring or {}),
                   {k: v for k, v in (sampler or {}).items() if v is not None})


def sampler_settings(model_info: Mapping[str, Any] | None) -> dict:
    """The sampler section from an LM's ``get_model_info()`` (``latentlm_steps``, ``latentlm_cfg_scale``, ... as
    ``LatentLM`` reports them; the plain names too): only ``SAMPLER_KEYS``, never paths or weights."""
    info = dict(model_info or {})
    out = {}
    for key in SAMPLER_KEYS:
        for name in (f"latentlm_{key}", key):
            if info.get(name) is not None:
                out[key] = info[name]
                break
    return out
