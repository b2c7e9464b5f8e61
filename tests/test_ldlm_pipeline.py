"""LDLM on the platform: config validation, the joint + post-decoder stages on Ray Train, unconditional
evaluation, and LDLM sweeps planned through the shared sweep machinery."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentlm.models.config import ConfigError
from latentlm.platform.methods.ldlm.config import build_ldlm_config


@pytest.fixture(scope="module")
def tiny_scorer_dir(tiny_lm_dir, tmp_path_factory) -> Path:
    """A second tiny random causal LM on the same tokenizer: the Gen-PPL scorer must not be the encoder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    directory = tmp_path_factory.mktemp("tiny_scorer")
    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=0, pad_token_id=0)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def ldlm_overrides(tiny_corpus, tiny_lm_dir, tiny_scorer_dir):
    from latentlm.platform.config import merge
    lm, coder = str(tiny_lm_dir), {"depth": 1, "hidden_dim": 32, "n_heads": 2}
    base = {
        "data": {"corpus": str(tiny_corpus), "tokenizer": lm, "seq_len": 16, "teacher_windows": 96,
                 "teacher_batch_size": 32, "valid_fraction": 0.1, "test_fraction": 0.1, "vocab_limit": 24},
        "token_encoder": {"model": lm, "layer": -2, "stats_windows": 64},
        "ldlm": {"latent_dim": 8, "encoder": coder, "decoder": coder,
                 "token_decoder": {"layers": 1, "hidden_dim": 32, "n_heads": 2},
                 "denoiser": {"hidden_dim": 32, "depth": 2, "n_heads": 2}, "warmup_steps": 60,
                 "adaptive_bins": 10, "adaptive_update_every": 2, "decoder_noise": 0.05},
        # logged at every step, checkpointed every 20, with an EMA: the resume test's uninterrupted reference
        "train_joint": {"optim": {"steps": 60, "batch_size": 16, "lr": 5e-3, "log_every": 1, "warmup_steps": 2,
                                  "checkpoint_every": 20, "ema_decay": 0.9}},
        "train_post_decoder": {"enabled": True, "layers": 1,
                         "optim": {"steps": 10, "batch_size": 16, "lr": 3e-3, "log_every": 5, "warmup_steps": 1}},
        "eval": {"datasets": [str(tiny_corpus)], "num_samples": 8, "sampling_seeds": [0, 1], "steps": 6,
                 "batch_size": 8, "genppl_model": str(tiny_scorer_dir), "mauve_kmeans_seeds": [25, 26], "mauve_model": lm, "interpolation_pairs": 2,
                 "interpolation_points": 3},
        "wandb": False,
    }
    return lambda **sections: merge(base, sections)


def test_ldlm_bad_inputs_fail_before_training(ldlm_overrides, tiny_lm_dir):
    from latentlm.platform.methods.ldlm.pipeline import validate_ldlm
    with pytest.raises(ConfigError, match="eval.genppl_model"):
        validate_ldlm(build_ldlm_config("tiny", ldlm_overrides(eval={"genppl_model": str(tiny_lm_dir)})))
    with pytest.raises(ConfigError, match="token_encoder.layer"):  # the tiny LM has 4 layers
        validate_ldlm(build_ldlm_config("tiny", ldlm_overrides(token_encoder={"layer": 9})))
    with pytest.raises(ConfigError, match="unknown config key ldlm.warmup"):
        build_ldlm_config("tiny", ldlm_overrides(ldlm={"warmup": 3}))
    with pytest.raises(ConfigError, match="train_post_decoder.enabled"):
        build_ldlm_config("tiny", ldlm_overrides(ldlm={"train_token_decoder": False},
                                                 train_post_decoder={"enabled": False}))
    with pytest.raises(ConfigError, match="ldlm.seq_len"):
        build_ldlm_config("tiny", ldlm_overrides(ldlm={"seq_len": 8}))


def test_cli_train_ldlm_rejects_bad_config_before_running(capsys):
    from latentlm.platform import cli
    assert cli.main(["train", "--method", "ldlm", "--set", "ldlm.decoder_noise=-1"]) == 2
    assert "ldlm.decoder_noise" in capsys.readouterr().err


def test_every_preset_builds():
    for preset in ("tiny", "small", "paper"):
        cfg = build_ldlm_config(preset)
        assert cfg.ldlm.seq_len == cfg.data.seq_len == cfg.ldlm.num_latents


@pytest.fixture(scope="module")
def ldlm_run(ldlm_overrides, tmp_path_factory, ray_local):
    """The LDLM pipeline, trained and evaluated once: (config, run output, run dir; its parent is the data root).
    The end-to-end test checks it; the resume test compares an interrupted joint stage with it."""
    from latentlm.platform.methods.ldlm.pipeline import run_ldlm
    cfg = build_ldlm_config("tiny", ldlm_overrides())
    run_dir = tmp_path_factory.mktemp("ldlm-run") / "run"
    return cfg, run_ldlm(cfg, run_dir), run_dir


@pytest.mark.ray
def test_ldlm_pipeline_end_to_end(ldlm_run, ldlm_overrides, tiny_corpus):
    from latentlm.platform.methods.ldlm.generator import LDLMGenerator
    from latentlm.platform.methods.ldlm.pipeline import run_ldlm
    cfg, out, run_dir = ldlm_run
    row = out["results"][str(tiny_corpus)]
    for key in ("gen_ppl", "gen_ppl_std", "mauve", "mauve_std", "mauve_kmeans_std", "mauve_sampling_std", "entropy",
                "diversity", "reference_gen_ppl"):
        assert key in row and row[key] == row[key], key  # present and not NaN
    assert "interp_ppl_mean" in row  # NaN when every decoded point is empty (an untrained decoder emits EOS)
    assert 0 < row["mauve"] <= 1 and 0 <= row["diversity"] <= 1 and row["entropy"] >= 0
    assert row["seeds"] == 2 and row["samples"] == 8
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "unconditional/v3" and len(metrics["per_seed"][str(tiny_corpus)]) == 2
    assert metrics["protocol"]["hash"] == out["evaluation"].protocol.hash
    steps = out["evaluation"].progressions[str(tiny_corpus)]["steps"]
    assert steps == [1, 6]  # the configured progression steps that exist (<= 6) and the final step
    ceiling = out["evaluation"].ceiling.get(str(tiny_corpus))
    if ceiling is not None:  # the tiny corpus may hold too few held-out windows for a second reference set
        assert 0 < ceiling["mauve"] <= 1
    assert len(metrics["interpolation_curve"]) == 3

    joint = Path(out["joint_checkpoint"])
    for name in ("ldlm.safetensors", "timestep_sampler.safetensors", "hidden_stats.safetensors", "vocab.safetensors"):
        assert (joint / name).is_file(), name
    logged = [json.loads(line) for line in (run_dir / "ldlm_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, 61))
    assert all(k in logged[-1] for k in ("mse", "diffusion", "ce", "tokens_per_s", "latent_norm"))
    assert logged[-1]["diffusion"] < logged[0]["diffusion"]  # (the models' tests show every loss falling)
    assert all(m["mse"] == m["mse"] and m["ce"] == m["ce"] for m in logged)
    assert (run_dir / "post_decoder_metrics.jsonl").is_file()
    assert out["post_decoder_checkpoint"] and out["checkpoint"] == out["post_decoder_checkpoint"]

    # The checkpoint samples without Ray, deterministically given the seed, through the post-trained decoder.
    gen = LDLMGenerator.from_checkpoints(cfg, out["joint_checkpoint"], out["post_decoder_checkpoint"])
    a = gen.sample(3, 4, torch.Generator().manual_seed(0))
    b = gen.sample(3, 4, torch.Generator().manual_seed(0))
    assert a.shape == (3, 16) and torch.equal(a, b)

    # ... and from the command line, which recognises LDLM checkpoints
    from latentlm.platform import cli
    assert cli.main(["sample", out["post_decoder_checkpoint"], "--num", "2", "--steps", "3"]) == 0
    assert cli.main(["sample", out["joint_checkpoint"], "--prompt", "the river"]) == 2  # unconditional only

    # A second run of the same config reuses both stages; an eval-only change retrains nothing.
    again = run_ldlm(build_ldlm_config("tiny", ldlm_overrides(eval={"steps": 3})), run_dir.parent / "run2",
                     data_root=run_dir.parent, cache_root=run_dir)
    assert again["stage_seconds"]["joint"] == 0.0 and again["stage_seconds"]["post_decoder"] == 0.0
    assert again["joint_checkpoint"] == out["joint_checkpoint"]


def test_ldlm_sweep_specs_are_validated_before_any_trial(ldlm_overrides):
    from latentlm.platform.sweep import SweepSpec, plan_trials
    base = ldlm_overrides()
    with pytest.raises(ConfigError, match="sweep.axes.vae.repa.enabled"):  # a TextLDM axis
        plan_trials(SweepSpec("s", method="ldlm", axes={"vae.repa.enabled": [True]}, overrides=base))
    with pytest.raises(ConfigError, match="sweep.axes.ldlm.decoder_noise"):
        plan_trials(SweepSpec("s", method="ldlm", axes={"ldlm.decoder_noise": []}, overrides=base))
    with pytest.raises(ConfigError, match="ldlm.recon_loss"):
        plan_trials(SweepSpec("s", method="ldlm", axes={"ldlm.recon_loss": ["mse", "l1"]}, overrides=base))
    # knobs that cannot act collapse: the adaptive sampler's bins do not matter under uniform sampling
    trials = plan_trials(SweepSpec("s", method="ldlm", overrides=base, axes={
        "ldlm.timestep_sampler": ["uniform", "adaptive"], "ldlm.adaptive_bins": [10, 20]}))
    assert len(trials) == 3


def test_ldlm_experiment_scripts_plan_on_the_tiny_preset():
    import importlib.util
    from latentlm.platform.sweep import SweepSpec, plan_trials
    root = Path(__file__).resolve().parents[1] / "experiments"
    # ablate_ldlm_encoder: hidden states, embeddings (layer 0), scratch (its two layers collapse to one trial)
    expected = {"ablate_ldlm_recipe": 4, "ablate_decoder_noise": 3, "ablate_ldlm_layer": 2, "ablate_ldlm_encoder": 3}
    for name, count in expected.items():
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        trials = plan_trials(SweepSpec(name, method="ldlm", axes=module.axes("tiny")))
        assert len(trials) == count, name


def test_scratch_embeddings_need_no_teacher_and_train_their_own_stage(ldlm_overrides):
    from latentlm.platform.evaluation.protocol import EvalProtocol
    from latentlm.platform.methods.ldlm.config import ldlm_teacher_layers
    from latentlm.platform.methods.ldlm.pipeline import ldlm_stage_keys, validate_ldlm
    frozen = build_ldlm_config("tiny", ldlm_overrides())
    scratch = build_ldlm_config("tiny", ldlm_overrides(ldlm={"encoder_input": "scratch", "recon_loss": "ce"}))
    assert frozen.teacher_request() is not None and scratch.teacher_request() is None
    assert ldlm_teacher_layers([frozen, scratch]) == [-2] and ldlm_teacher_layers([scratch]) == []
    keys = ldlm_stage_keys(scratch)["joint"]
    assert keys != ldlm_stage_keys(frozen)["joint"]
    frozen_ce = build_ldlm_config("tiny", ldlm_overrides(ldlm={"recon_loss": "ce"}))
    assert keys != ldlm_stage_keys(frozen_ce)["joint"]
    other_layer = build_ldlm_config("tiny", ldlm_overrides(ldlm={"encoder_input": "scratch", "recon_loss": "ce"},
                                                           token_encoder={"layer": -1}))
    assert ldlm_stage_keys(other_layer) == ldlm_stage_keys(scratch)  # a token encoder it never reads
    no_lm = build_ldlm_config("tiny", ldlm_overrides(ldlm={"encoder_input": "scratch", "recon_loss": "ce"},
                                                     token_encoder={"model": "/nonexistent/lm"}))
    assert "encoder_layers" not in validate_ldlm(no_lm)  # the frozen LM is never loaded
    # the sampler is inference only: no stage retrains, and the AR baseline's protocol hash is untouched
    ddim = build_ldlm_config("tiny", ldlm_overrides(sampler={"kind": "ddim", "eta": 1.0}))
    assert ldlm_stage_keys(ddim) == ldlm_stage_keys(frozen)
    assert EvalProtocol.from_config(ddim).hash == EvalProtocol.from_config(frozen).hash
    with pytest.raises(ConfigError, match="sampler.eta"):
        build_ldlm_config("tiny", ldlm_overrides(sampler={"eta": -0.1}))
    with pytest.raises(ConfigError, match="sampler.kind"):
        build_ldlm_config("tiny", ldlm_overrides(sampler={"kind": "heun"}))


def test_scratch_generator_samples_with_the_configured_sampler_and_probes_without_a_token_encoder(
        ldlm_overrides, tiny_lm_dir):
    from latentlm.models.ldlm import LDLM
    from latentlm.platform.data.windows import load_tokenizer
    from latentlm.platform.methods.ldlm.generator import LDLMGenerator
    from latentlm.platform.methods.ldlm.pipeline import interpolation_probe
    tokenizer = load_tokenizer(str(tiny_lm_dir))
    cfg = build_ldlm_config("tiny", ldlm_overrides(ldlm={"encoder_input": "scratch", "recon_loss": "ce",
                                                         "hidden_size": 16, "vocab_size": len(tokenizer)},
                                                   sampler={"kind": "ddim"}))
    torch.manual_seed(0)
    gen = LDLMGenerator(cfg, LDLM(cfg.ldlm), None)
    ids = gen.sample(2, 4, torch.Generator().manual_seed(0))
    z = gen.model.sample_latents(2, 4, torch.Generator().manual_seed(0), sampler="ddim")
    assert ids.shape == (2, 16) and torch.equal(ids, gen.decode(z))
    windows = torch.randint(0, len(tokenizer), (4, 16), generator=torch.Generator().manual_seed(1)).numpy()
    curve = interpolation_probe(gen, None, windows, tokenizer, lambda texts: {"gen_ppl": float(len(texts))}, 2, 3)
    assert curve == [2.0, 2.0, 2.0]


@pytest.mark.ray
def test_ldlm_killed_worker_resumes_bit_identically(ldlm_run, tmp_path):
    """The joint stage killed at step 50 resumes from its step-40 checkpoint (weights, optimizer, EMA, RNG
    streams, data position and the adaptive sampler's statistics) and ends exactly like the uninterrupted run of
    the same config and data: the pipeline's joint stage in ``ldlm_run``."""
    from latentlm.platform.config import to_dict
    from latentlm.platform.data.windows import feature_stats, prepare_data
    from latentlm.platform.training.launch import run_stage, training_dataset
    from latentlm.platform.methods.ldlm.train import train_ldlm_loop
    from latentlm.models.checkpoint import load_tensors
    cfg, out, clean_run = ldlm_run
    art = prepare_data(cfg, clean_run.parent, True)  # prepared by the pipeline: found, not redone
    stats = feature_stats(art.vae_train, art.teacher_layer, art.teacher_dim, cfg.token_encoder.stats_windows)

    def run(name, **extra):
        run_dir = tmp_path / name
        run_dir.mkdir()
        loop = {"experiment": to_dict(cfg), "run_dir": str(run_dir), "run_name": "resume", "vocab": art.vocab,
                "hidden_stats": stats, **extra}
        dataset = training_dataset(art.vae_train, ["tokens", "length", art.teacher_column],
                                   cfg.data.materialize_max_mb, art.vae_windows, {art.teacher_column: "hidden"})
        checkpoint = Path(run_stage(train_ldlm_loop, loop, dataset, name, tmp_path / "ray", cfg.resources))
        lines = (run_dir / "ldlm_metrics.jsonl").read_text().splitlines()
        return checkpoint, [json.loads(line)["step"] for line in lines], {m["step"]: m for m in map(json.loads, lines)}

    clean_checkpoint = Path(out["joint_checkpoint"])
    clean = {m["step"]: m for m in map(json.loads, (clean_run / "ldlm_metrics.jsonl").read_text().splitlines())}
    marker = tmp_path / "fault-injected"
    checkpoint, steps, resumed = run("faulty", inject_fault={"step": 50, "marker": str(marker)})
    assert marker.exists() and steps == [*range(1, 50), *range(41, 61)]  # died before logging 50, resumed at 41
    assert [resumed[s]["loss"] for s in range(1, 61)] == [clean[s]["loss"] for s in range(1, 61)]
    for name in ("ldlm", "ema", "timestep_sampler"):
        got, want = load_tensors(checkpoint / f"{name}.safetensors"), load_tensors(clean_checkpoint / f"{name}.safetensors")
        assert all(torch.equal(got[k], want[k]) for k in want), name
    sampler = load_tensors(checkpoint / "timestep_sampler.safetensors")
    assert int(sampler["updates"]) == 60 and bool(sampler["edge_seen"].any())


def test_reference_windows_are_full_packed_windows_and_the_ceilings_share_no_document(tiny_lm_dir):
    """Unconditional v3: both sides are full windows of held-out text packed like the training data (EOS
    between documents, no padding); the human ceiling's windows come from other documents."""
    from latentlm.platform.data.windows import load_tokenizer
    from latentlm.platform.evaluation.unconditional import reference_windows
    tokenizer = load_tokenizer(str(tiny_lm_dir))
    docs = ["the river city music people king war science old new small large early later north south",
            "the old king .", "a ship on the road", "north south forest island mountain school book law art trade"]
    refs, others, windows = reference_windows(docs, tokenizer, seq_len=8, n=2)
    assert windows.shape == (2, 8) and all(len(x) == 8 for x in refs + others)
    texts = tokenizer.batch_decode(refs, skip_special_tokens=False)
    assert texts[0] == "the river city music people king war science"
    assert texts[1].split()[:8] == "old new small large early later north south".split()
    # windows 2-3 still hold document 0's EOS and document 1: the ceiling starts after them
    other = tokenizer.batch_decode(others, skip_special_tokens=True)
    assert "old king" not in " ".join(other) and "river" not in " ".join(other) and len(others) >= 1


def test_masked_lm_tokenizers_end_documents_with_sep(tmp_path):
    """A BERT-style token encoder (LDLM App. B.3) has no EOS: its [SEP] ends documents instead."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from latentlm.platform.data.windows import load_tokenizer, tokenize_windows
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "[SEP]": 2, "a": 3, "b": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, sep_token="[SEP]", pad_token="[PAD]",
                            unk_token="[UNK]").save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.eos_token_id == 2 and loaded.pad_token_id == 0
    w = tokenize_windows(["a b a"], loaded, seq_len=6)
    assert w.tokens[0].tolist() == [3, 4, 3, 2, 0, 0] and w.lengths[0] == 4


@pytest.mark.ray
def test_streamed_features_train_the_joint_stage_over_every_window(ldlm_run, ldlm_overrides):
    """``data.teacher_placement: streamed``: the joint stage reads the whole training split (not the first
    ``data.teacher_windows``) with the token encoder run by Ray Data actors, and its statistics come from a pass of
    their own, stored without features."""
    from latentlm.platform.methods.ldlm.pipeline import train_ldlm
    _, _, clean_run = ldlm_run
    cfg = build_ldlm_config("tiny", ldlm_overrides(
        data={"teacher_placement": "streamed"}, train_post_decoder={"enabled": False},
        train_joint={"optim": {"steps": 4, "log_every": 2, "checkpoint_every": 0}}))
    run_dir = clean_run.parent / "streamed"
    trained = train_ldlm(cfg, run_dir, data_root=clean_run.parent)
    art = trained.artifacts
    assert art.vae_windows is None and art.vae_train == art.train  # every window of the split, not the first 96
    assert cfg.ldlm.hidden_size == art.teacher_dim == 32
    assert (Path(trained.checkpoints["joint"]) / "ldlm.safetensors").is_file()
    metrics = [json.loads(line) for line in (run_dir / "ldlm_metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [2, 4] and all(0 <= m["data_wait"] <= 1 for m in metrics)
    stats_dirs = {f.parent for f in (clean_run.parent / "data").rglob(f"stats_{art.teacher_layer}_64.safetensors")}
    assert any(not (d / "shards").exists() for d in stats_dirs)  # the streamed statistics: no features beside them
