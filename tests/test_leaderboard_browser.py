"""The leaderboard page in a real browser: headless Chromium loads the self-contained HTML from a file:// URL,
runs its inline scripts, and the test reads the DOM it dumps (ranking tables, per-axis SVG plots with error
bars, the denoising-progression view, switching rows through ``#progression=<row_id>``) and takes a
screenshot. Skipped only when Chromium is not installed (.ci/run installs it).

Also a script: ``python tests/test_leaderboard_browser.py [OUT_DIR]`` (``make leaderboard-demo``) writes the
demo page and a screenshot of it to OUT_DIR (default runs/leaderboard_demo)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from latentlm.platform import leaderboard as lb

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 60
PROTOCOL = "continuation/v2"
SCORING = "5c0e5c0e5c0e5c0e"
STEPS = (10, 25, 50)
TRICKY = 'step text with </script><script>alert(1)</script> and <b>bold</b> & "quotes"'


def protocol_hash(steps: int) -> str:
    """The protocol fixes its sampler, so each step count is its own protocol (hash)."""
    return f"{steps:04d}" + "ab" * 6


def protocol_info(steps: int) -> dict:
    return {"name": PROTOCOL, "version": 2, "hash": protocol_hash(steps), "scoring_hash": SCORING,
            "split": [0.4, 0.6], "metrics": ["rouge1", "mauve"], "sampler": {"steps": steps, "cfg_scale": 7.0}}


def progression(tag: str, steps: int, last: str) -> dict:
    recorded = [1, steps // 2, steps]
    return {"prompt": f"The river ({tag})", "reference": "flows to the sea past the old mill.",
            "total_steps": steps, "steps": recorded,
            "texts": [f"{tag} noise at step {recorded[0]}", f"{tag} half-way at step {recorded[1]}", last]}


def demo_rows() -> list[dict]:
    """A sampler-steps sweep (one protocol hash per step count, one scoring hash) of REPA on, plus REPA off at
    50 steps, on two datasets, with seed spreads (``*_std``), a human ceiling and denoising progressions."""
    rows = []
    trials = [(True, steps) for steps in STEPS] + [(False, 50)]
    for repa, steps in trials:
        quality = 0.25 + 0.01 * steps + (0.1 if repa else 0.0)
        results = {
            "embedded:wiki": {"mauve": quality, "mauve_std": 0.02 + 0.001 * steps, "rouge1": 0.2 + quality / 4,
                              "gen_ppl": 400.0 / quality, "gen_ppl_std": 12.5, "entropy": 4.1 + quality,
                              "diversity": 0.3 + quality / 2, "samples": 64},
            "embedded:shakespeare": {"mauve": quality / 2, "mauve_std": 0.015, "rouge1": 0.1 + quality / 8,
                                     "samples": 64}}
        progressions = {"embedded:wiki": progression(f"repa={repa} steps={steps}", steps,
                                                     TRICKY if not repa else f"final text at {steps} steps")}
        config = {"vae": {"repa": {"enabled": repa}}, "eval": {"steps": steps}}
        rows += lb.make_rows("textldm", "ablate_dlm_steps", f"trial-repa{int(repa)}-s{steps}",
                             {"vae.repa.enabled": repa, "eval.steps": steps}, results, PROTOCOL,
                             protocol_hash(steps), 0, 120.0 + steps, f"/ckpt/{repa}-{steps}", config,
                             machine="demo", created_at="2026-11-23T10:00:00+00:00",
                             protocol_info=protocol_info(steps), progressions=progressions)
    rows += lb.make_rows("human", "ceiling", "human-vs-human", {}, {"embedded:wiki": {"mauve": 0.97, "rouge1": 0.41},
                                                                    "embedded:shakespeare": {"mauve": 0.95}},
                         PROTOCOL, protocol_hash(50), 0, None, None, {"human": True}, machine="demo",
                         created_at="2026-11-23T10:00:00+00:00", protocol_info=protocol_info(50))
    return rows


def write_demo(out_dir: Path) -> Path:
    board = lb.Leaderboard(out_dir / "leaderboard.parquet")
    board.add(demo_rows())
    return lb.to_html(board.frame(), out_dir / "leaderboard.html", title="leaderboard demo: sampler steps sweep")


def chromium(page: Path, fragment: str = "", *args: str, profile: Path) -> str:
    """Run headless Chromium on ``file://page#fragment`` with ``args``; returns stdout. The browser runs in its
    own process group, killed on the way out (timeout or not) so no renderer outlives the test."""
    profile.mkdir(parents=True, exist_ok=True)
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args,
               page.resolve().as_uri() + fragment]
    env = {**os.environ, "HOME": str(profile), "XDG_CONFIG_HOME": str(profile / "config"),
           "XDG_CACHE_HOME": str(profile / "cache")}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError(f"chromium did not finish within {TIMEOUT_S}s: {' '.join(command)}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers (zygote, utility processes) left in the group
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err[-2000:]}"
    return out


class _Dom(HTMLParser):
    """``tags``: (tag, attrs, ancestors) per start tag; ``texts``: (ancestors, tag, text) per text node, where
    ancestors are the enclosing elements' ids (or classes, or tag names), outermost first."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict, tuple[str, ...]]] = []
        self.stack: list[tuple[str, dict]] = []
        self.texts: list[tuple[tuple[str, ...], str, str]] = []

    def _path(self) -> tuple[str, ...]:
        return tuple(a.get("id") or a.get("class") or t for t, a in self.stack)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs, self._path()))
        if tag not in ("meta", "br", "img", "input", "link", "hr", "col", "wbr"):
            self.stack.append((tag, attrs))

    def handle_endtag(self, tag):
        if any(t == tag for t, _ in self.stack):
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data):
        if self.stack and data.strip():
            self.texts.append((self._path(), self.stack[-1][0], data))


def parse(dom: str) -> _Dom:
    parser = _Dom()
    parser.feed(dom)
    return parser


def view_rows(dom: _Dom) -> tuple[str, list[tuple[str, str]]]:
    """(row id shown, [(row header, cell text)]) of the progression view."""
    (view,) = [a for t, a, _ in dom.tags if t == "table" and a.get("id") == "progression-view"]
    cells = [(tag, text) for p, tag, text in dom.texts if "progression-view" in p and tag in ("th", "td")]
    rows = [(cells[i][1], cells[i + 1][1]) for i in range(0, len(cells) - 1, 2)]
    return view["data-row-id"], rows


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"headless browser test: {CHROMIUM} is not "
                                    "installed (Debian package 'chromium'; .ci/run installs it)")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("board")
    page = write_demo(out)
    return page, lb.read(out / "leaderboard.parquet"), out


@needs_chromium
def test_page_renders_tables_plots_and_progression_in_chromium(demo):
    page, df, out = demo
    dom = parse(chromium(page, "", "--dump-dom", profile=out / "profile-a"))
    # the sorting script ran: it makes every header focusable
    tables = [a for t, a, _ in dom.tags if t == "table" and a.get("class") == "leaderboard"]
    assert len(tables) == 2 * len(STEPS)  # one per (protocol hash, dataset): rows of different hashes not ranked together
    assert all(a.get("tabindex") == "0" for t, a, _ in dom.tags if t == "th" and "data-col" in a)
    # ranking: within the 50-step wiki table the human ceiling (italic) is first, then REPA on, then off
    section = [a["id"] for t, a, _ in dom.tags if t == "section" and a.get("data-protocol-hash") == protocol_hash(50)
               and a.get("data-dataset") == "embedded:wiki"]
    assert len(section) == 1
    ranked = [a for t, a, p in dom.tags if t == "tr" and "data-row-id" in a and section[0] in p]
    methods = {r["row_id"]: r["method"] for _, r in df.iterrows()}
    assert [methods[a["data-row-id"]] for a in ranked] == ["human", "textldm", "textldm"]
    assert ranked[0].get("class") == "ceiling"
    cells = [text for p, tag, text in dom.texts if section[0] in p and tag == "td"]
    assert any(" ± " in c for c in cells)  # mean ± std in one cell
    headers = [text for p, tag, text in dom.texts if section[0] in p and tag == "th"]
    assert "Gen-PPL" in headers and not any(h.endswith("_std") for h in headers)
    assert headers.index("MAUVE (x100)") < headers.index("Gen-PPL") < headers.index("entropy") < headers.index(
        "diversity") < headers.index("samples")

    # per-axis plots: one over eval.steps although every step count has its own protocol hash
    figures = {a["data-axis"]: a for t, a, _ in dom.tags if t == "figure" and a.get("class") == "axis-plot"}
    assert set(figures) == {"eval.steps", "vae.repa.enabled"}
    assert figures["eval.steps"]["data-scoring-hash"] == SCORING
    assert figures["eval.steps"]["data-protocol-hash"].split() == sorted(protocol_hash(s) for s in STEPS)
    svgs = [p for t, a, p in dom.tags if t == "svg" and a.get("class") == "axis-plot-svg"]
    assert len(svgs) == 2
    bars = [(a.get("data-source"), p) for t, a, p in dom.tags if t == "path" and a.get("class") == "errorbar"]
    steps_id = figures["eval.steps"]["id"]
    # 10 and 25 steps: one row each -> that row's own std over seeds; 50 steps: REPA on and off -> across rows
    assert {s for s, p in bars if steps_id in p} == {"seeds", "rows"}
    captions = [text for p, tag, text in dom.texts if tag == "figcaption" and steps_id in p]
    assert "span 3 protocol hashes" in captions[0]

    # progression view: the first listed row is shown, rendered server-side and intact after the script
    options = [a for t, a, p in dom.tags if t == "option" and "progression" in p]
    assert len(options) == len(STEPS) + 1
    shown, rows = view_rows(dom)
    assert shown == options[0]["value"]
    entry = lb.check_progression("demo", json.loads(df.set_index("row_id").loc[shown, "progression_json"]))
    assert rows == [("prompt", entry["prompt"]),
                    *[(f"step {s} / {entry['total_steps']}", t) for s, t in zip(entry["steps"], entry["texts"])],
                    ("reference", entry["reference"])]
    assert not [a for t, a, _ in dom.tags if t == "b"]  # no markup injected by progression texts


@needs_chromium
def test_progression_fragment_switches_the_row(demo):
    page, df, out = demo
    tricky = df[df["progression_json"].fillna("").str.contains("alert", regex=False)]
    (row_id,) = tricky["row_id"]
    dom = parse(chromium(page, f"#progression={row_id}", "--dump-dom", profile=out / "profile-b"))
    shown, rows = view_rows(dom)
    assert shown == row_id
    assert rows[0] == ("prompt", "The river (repa=False steps=50)")
    assert rows[1:-1] == [("step 1 / 50", "repa=False steps=50 noise at step 1"),
                          ("step 25 / 50", "repa=False steps=50 half-way at step 25"), ("step 50 / 50", TRICKY)]
    assert not [a for t, a, _ in dom.tags if t == "b"]
    # the injected text never became a script element: only the page's own two scripts and the JSON data
    assert len([a for t, a, _ in dom.tags if t == "script"]) == 3
    # an unknown row id leaves the default row in place
    dom = parse(chromium(page, "#progression=nope", "--dump-dom", profile=out / "profile-b"))
    assert view_rows(dom)[0] != "nope"


@needs_chromium
def test_screenshot(demo):
    page, _, out = demo
    png = out / "shot.png"
    chromium(page, "", f"--screenshot={png}", "--window-size=1200,2400", "--hide-scrollbars", profile=out / "profile-c")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a rendered page, not a blank one


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/leaderboard_demo")
    target.mkdir(parents=True, exist_ok=True)
    (target / "leaderboard.parquet").unlink(missing_ok=True)
    html_path = write_demo(target)
    print(html_path)
    if CHROMIUM.exists():
        # the page's first 2400 px, then a taller shot down to the progression view showing REPA-off's row
        chosen = lb.read(target / "leaderboard.parquet").query("trial == 'trial-repa0-s50' and "
                                                               "dataset == 'embedded:wiki'")["row_id"].iloc[0]
        for name, fragment, size in (("leaderboard.png", "", "1200,2400"),
                                     ("leaderboard_full.png", f"#progression={chosen}", "1200,3400")):
            shot = (target / name).resolve()
            chromium(html_path, fragment, f"--screenshot={shot}", f"--window-size={size}", "--hide-scrollbars",
                     profile=target / ".chromium-profile")
            print(shot)
    else:
        print(f"no screenshot: {CHROMIUM} is not installed", file=sys.stderr)
