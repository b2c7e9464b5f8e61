"""The method registry: a family declared in a few lines (a config, one training stage, a generator) is taken
by every registry-driven entry point (sweep planning, `latentlm train / evaluate / sample / info`, leaderboard
rows) without an edit to shared code; the built-in families' declarations resolve and agree with their code.

No ``from __future__ import annotations`` here: the Ray sweep test ships this module's classes by value to
workers that cannot import it, where string annotations would have no module to be resolved in."""
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from latentlm.models.checkpoint import read_json, write_json
from latentlm.models.config import ConfigError, require
from latentlm.platform import cli, registry
from latentlm.platform.config import from_dict, merge, to_dict
from latentlm.platform.evaluation.continuation import Evaluation
from latentlm.platform.evaluation.protocol import EvalProtocol
from latentlm.platform.methods.dlm.config import StageConfig
from latentlm.platform.sweep import SweepSpec, add_rows, plan_trials
from latentlm.platform.training.sections import DataConfig, EvalConfig, ResourcesConfig
from latentlm.platform.training.stages import Trained

# -- a toy family: everything it declares -------------------------------------------------------------------


@dataclass
class ToyConfig:
    name: str = "toy"
    seed: int = 0
    repeat: bool = True    # continue with the prompt's last token ...
    token: int = 0         # ... or with this id (ignored while repeat: a knob that cannot act)
    data: DataConfig = field(default_factory=DataConfig)
    train_toy: StageConfig = field(default_factory=StageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    def __post_init__(self):
        require(self.token >= 0, "token", ">= 0", self.token)


TOY_PRESETS = {"tiny": {}}


def build_toy(preset: str = "tiny", overrides: dict | None = None) -> ToyConfig:
    require(preset in TOY_PRESETS, "preset", f"one of {sorted(TOY_PRESETS)}", preset)
    return from_dict(ToyConfig, merge(TOY_PRESETS[preset], overrides or {}))


class ToyGenerator(torch.nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg, self.anchor = cfg, torch.nn.Parameter(torch.zeros(1))  # the protocol reads the device from it

    def generate(self, prompts, max_new, steps=None, cfg_scale=None, grid=None, generator=None):
        fill = prompts[:, -1:] if self.cfg.repeat else torch.full((len(prompts), 1), self.cfg.token)
        return fill.expand(len(prompts), max_new).clone()


def train_toy(cfg, run_dir, data_root=None, cache_root=None, teacher_layers=None) -> Trained:
    checkpoint = Path(run_dir) / "toy"
    write_json(checkpoint / "config.json", to_dict(cfg))
    write_json(checkpoint / "state.json", {"stage": "toy", "step": cfg.train_toy.optim.steps})
    return Trained({"toy": str(checkpoint)}, {"toy": 0.0}, {}, None, None)


def load_toy(checkpoint, use_ema=True, device="cpu") -> ToyGenerator:
    return ToyGenerator(from_dict(ToyConfig, read_json(Path(checkpoint) / "config.json"))).to(device)


def evaluate_toy(cfg, checkpoint, out_dir) -> Evaluation:
    ids = ToyGenerator(cfg).generate(torch.tensor([[5, 7]]), 4)  # under cfg: `latentlm evaluate --set` applies
    return Evaluation(EvalProtocol.from_config(cfg), {"toy-set": {"mauve": 0.5, "repeats": float((ids == 7).sum())}})


def run_toy(cfg, run_dir, data_root=None, cache_root=None, teacher_layers=None) -> registry.RunOutput:
    trained = train_toy(cfg, run_dir)
    evaluation = evaluate_toy(cfg, trained.checkpoints["toy"], Path(run_dir) / "eval")
    return {"results": evaluation.results, "evaluation": evaluation, "checkpoint": trained.checkpoints["toy"],
            "stage_seconds": {"toy": 0.0, "eval": 0.0}}


def toy_effective(config: dict) -> dict:
    return {**config, "token": 0} if config["repeat"] else config


TOY = registry.MethodSpec(
    name="toy", label="Toy", summary="repeats the prompt's last token", config=ToyConfig, build=build_toy,
    presets=TOY_PRESETS, stages=("toy",), final_stages=("toy",), train=train_toy, run=run_toy,
    load_generator=load_toy, evaluate=evaluate_toy, effective=toy_effective)


@pytest.fixture
def toy():
    registry.register(TOY)
    yield TOY
    registry.unregister(TOY.name)


# -- the toy through the entry points ---------------------------------------------------------------------

def test_a_sweep_plans_a_registered_family(toy):
    trials = plan_trials(SweepSpec("t", method="toy", axes={"repeat": [True, False], "token": [1, 2]}))
    # repeat ignores the token: 2 x 2 grid -> 3 distinct trials
    assert [t.trial_id for t in trials] == ["repeat=True,token=1", "repeat=False,token=1", "repeat=False,token=2"]
    with pytest.raises(ConfigError, match=r"sweep\.axes\.tokn: the ToyConfig config has no field"):
        plan_trials(SweepSpec("t", method="toy", axes={"tokn": [1]}))
    with pytest.raises(ConfigError, match="sweep trial token=-1: token: expected >= 0"):
        plan_trials(SweepSpec("t", method="toy", axes={"token": [-1]}))
    with pytest.raises(ConfigError, match="sweep.baseline"):  # no family is registered as its baseline
        plan_trials(SweepSpec("t", method="toy", baseline=True))


def test_the_command_line_trains_evaluates_and_samples_a_registered_family(toy, tiny_lm_dir, tmp_path, capsys):
    assert cli.main(["train", "--method", "toy", "--set", "token=-1"]) == 2
    assert "token: expected >= 0" in capsys.readouterr().err
    run = ["train", "--method", "toy", "--run-dir", str(tmp_path / "run"), "--set", f"data.tokenizer={tiny_lm_dir}"]
    assert cli.main(run) == 0
    checkpoint = json.loads(capsys.readouterr().out)["checkpoint"]
    assert cli.main(["evaluate", checkpoint, "--set", "repeat=false"]) == 0
    assert json.loads(capsys.readouterr().out)["results"] == {"toy-set": {"mauve": 0.5, "repeats": 0.0}}
    assert cli.main(["sample", checkpoint, "--prompt", "the old river", "--length", "3", "--num", "2"]) == 0
    continuation = "river river river"  # the word-level tokenizer decodes it without a leading space
    assert capsys.readouterr().out.splitlines() == [f"the old river{continuation}", "---"] * 2


def test_info_lists_every_registered_family(toy, monkeypatch, capsys):
    from latentlm.platform.data import assets
    monkeypatch.setattr(assets, "describe", lambda: {})
    assert cli.main(["info"]) == 0
    methods = json.loads(capsys.readouterr().out)["methods"]
    assert list(methods) == ["textldm", "ldlm", "dlm", "ar", "toy"]
    assert methods["toy"] == {"label": "Toy", "task": "continuation", "presets": ["tiny"], "stages": ["toy"],
                              "final_stages": ["toy"]}
    assert methods["ldlm"]["task"] == "unconditional" and methods["ldlm"]["final_stages"] == ["ldlm", "post_decoder"]


def test_a_registered_familys_run_lands_on_the_leaderboard(toy, tmp_path):
    from latentlm.platform import leaderboard
    cfg = toy.build("tiny", {"repeat": False})
    out = toy.run(cfg, tmp_path / "run")
    add_rows(tmp_path / "leaderboard.parquet", "toy", "s", "t", {"repeat": False}, cfg, out, compute_seconds=0.0)
    board = leaderboard.read(tmp_path / "leaderboard.parquet")
    assert board[["method", "trial", "dataset", "mauve"]].values.tolist() == [["toy", "t", "toy-set", 0.5]]
    assert board["protocol"].tolist() == ["continuation/v3"]


@pytest.mark.ray
def test_a_registered_family_sweeps_through_tune(toy, tiny_lm_dir, tmp_path, ray_local):
    """The trial workers never ran ``register``: the sweep ships the family's spec with each trial."""
    import pandas as pd
    from ray import cloudpickle

    from latentlm.platform.sweep import sweep_main
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import this test module
    argv = ["--run-dir", str(tmp_path / "runs"), "--set", f"data.tokenizer={tiny_lm_dir}"]
    assert sweep_main("toy", lambda preset: {"repeat": [False], "token": [1, 2]}, "toy sweep", argv,
                      method="toy") == 0
    board = pd.read_parquet(tmp_path / "runs" / "toy" / "leaderboard.parquet")
    assert sorted(board["trial"]) == ["repeat=False,token=1", "repeat=False,token=2"]
    assert set(board["method"]) == {"toy"}


# -- the registry itself ------------------------------------------------------------------------------------

def test_the_builtin_declarations_resolve_and_agree_with_their_code():
    from latentlm.platform.methods.ar.config import MATCHABLE
    for method in registry.methods().values():
        for f in dataclasses.fields(method):
            value = getattr(method, f.name)
            if isinstance(value, registry.Lazy):
                value.resolve()  # a typo in a "module:attribute" fails here, not in the first user's run
        cfg = method.build(method.preset_names[0], {})
        assert isinstance(cfg, method.config_cls)
        for section in method.stage_sections.values():  # every declared stage section holds its optimiser
            assert getattr(cfg, section).optim.steps > 0, (method.name, section)
        # one naming scheme: every section that holds an optimiser is a declared stage's train_<stage>
        optimised = {f.name for f in dataclasses.fields(cfg) if hasattr(getattr(cfg, f.name), "optim")}
        assert optimised == set(method.stage_sections.values()), (method.name, optimised)
    assert registry.get("ar").baseline_of == tuple(MATCHABLE)
    assert registry.baseline_for("dlm").name == registry.baseline_for("ldlm").name == "ar"
    assert registry.baseline_for("ar") is None


def test_importing_the_registry_loads_neither_torch_nor_ray():
    code = ("import sys; from latentlm.platform import registry; registry.names(); "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_register_refuses_a_taken_name_or_stage_and_lookups_name_the_choices():
    textldm = registry.get("textldm")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register(textldm)
    with pytest.raises(ConfigError, match=r"stage\(s\) \['dit'\] already belong to 'textldm'"):
        registry.register(dataclasses.replace(textldm, name="other"))
    with pytest.raises(ConfigError, match="method name"):
        registry.register(dataclasses.replace(textldm, name="a:b", final_stages=()))
    with pytest.raises(ConfigError, match=r"method: expected one of \['textldm', 'ldlm', 'dlm', 'ar'\]"):
        registry.get("nope")
    assert "other" not in registry.names()
