"""Leaderboard: row identity, de-duplicating storage (re-adds, merges across machines, concurrent writers),
schema checks that name the file, Markdown/HTML rendering and the ``latentlm leaderboard`` command.
Fast and Ray-free."""
from __future__ import annotations

import json
import multiprocessing
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentlm.platform import cli
from latentlm.platform import leaderboard as lb

PROTOCOL, PHASH = "textldm-continuation/v1", "a1b2c3d4e5f60718"
T0, T1, T2 = "2026-11-23T10:00:00.000000+00:00", "2026-11-23T11:00:00.000000+00:00", "2026-11-23T12:00:00.000000+00:00"


def trial_rows(repa=True, latent_dim=16, cfg_scale=7.0, seed=0, mauve=(0.02, 0.01), method="textldm", sweep="s",
               protocol=PROTOCOL, protocol_hash=PHASH, created_at=T0, machine="box-a", extra=None, **kw):
    axes = {"vae.repa.enabled": repa, "vae.latent_dim": latent_dim, "eval.cfg_scale": cfg_scale}
    config = {"vae": {"repa": {"enabled": repa}, "latent_dim": latent_dim}, "eval": {"cfg_scale": cfg_scale}, **kw}
    results = {"embedded:wiki": {"mauve": mauve[0], "rouge1": 0.1 + mauve[0], "samples": 128, **(extra or {})},
               "embedded:shakespeare": {"mauve": mauve[1], "rouge1": 0.05, "samples": 128}}
    return lb.make_rows(method, sweep, f"trial-{repa}-{latent_dim}-{cfg_scale}", axes, results, protocol,
                        protocol_hash, seed, 61.5, f"/ckpt/{repa}-{latent_dim}", config, machine=machine,
                        created_at=created_at)


def ids(rows):
    return [r["row_id"] for r in rows]


# -- rows ------------------------------------------------------------------------------------------

def test_make_rows_schema():
    rows = trial_rows(extra={"eval_seconds": 3.5, "gen_ppl": float("nan")})
    assert len(rows) == 2 and all(list(r) == list(lb.COLUMNS) for r in rows)
    wiki = rows[0]
    assert wiki["dataset"] == "embedded:wiki" and wiki["mauve"] == 0.02 and wiki["bertscore"] is None
    assert wiki["axes"] == '{"eval.cfg_scale":7.0,"vae.latent_dim":16,"vae.repa.enabled":true}'
    assert wiki["metrics_json"] == '{"eval_seconds":3.5,"gen_ppl":null,"samples":128.0}'
    assert wiki["protocol"] == PROTOCOL and wiki["protocol_hash"] == PHASH and wiki["seed"] == 0
    assert len(wiki["row_id"]) == 64 and len(wiki["config_hash"]) == 64 and wiki["created_at"] == T0
    fresh = lb.make_rows("textldm", "s", "t", {}, {"d": {"mauve": 0.5}}, PROTOCOL, PHASH, 0, None, None, {})[0]
    assert fresh["created_at"].endswith("+00:00") and fresh["machine"]
    with pytest.raises(lb.LeaderboardError, match=r"results\['d'\]\['mauve'\]: expected a number"):
        lb.make_rows("textldm", "s", "t", {}, {"d": {"mauve": "high"}}, PROTOCOL, PHASH, 0, None, None, {})
    with pytest.raises(lb.LeaderboardError, match="seed"):
        lb.make_rows("textldm", "s", "t", {}, {"d": {"mauve": 0.5}}, PROTOCOL, PHASH, "0", None, None, {})


def test_row_id_stable_and_sensitive():
    base = trial_rows()
    # same trial re-run elsewhere: other sweep/trial name/machine/time/metrics, config keys in another order
    again = lb.make_rows("textldm", "other-sweep", "renamed", {}, {"embedded:wiki": {"mauve": 0.9},
                         "embedded:shakespeare": {}}, PROTOCOL, PHASH, 0, 999.0, "/elsewhere",
                         {"eval": {"cfg_scale": 7.0}, "vae": {"latent_dim": 16, "repa": {"enabled": True}}},
                         machine="box-b", created_at=T2)
    assert ids(again) == ids(base)
    assert len(set(ids(base))) == 2  # datasets differ
    changed = [trial_rows(method="ldlm"), trial_rows(protocol_hash="ffff0000ffff0000"), trial_rows(latent_dim=32),
               trial_rows(seed=1), trial_rows(lr=1e-4)]
    for rows in changed:
        assert not set(ids(rows)) & set(ids(base))
    assert len({i for rows in changed for i in ids(rows)}) == 2 * len(changed)
    renamed = lb.make_rows("textldm", "s", "t", {}, {"embedded:wiki2": {}}, PROTOCOL, PHASH, 0, None, None,
                           {"eval": {"cfg_scale": 7.0}, "vae": {"latent_dim": 16, "repa": {"enabled": True}}})
    assert renamed[0]["row_id"] not in ids(base)  # dataset is part of the identity


# -- storage ---------------------------------------------------------------------------------------

def test_add_and_readd_keeps_one_newest_row(tmp_path):
    board = lb.Leaderboard(tmp_path)  # a directory means <dir>/leaderboard.parquet
    assert board.path == tmp_path / "leaderboard.parquet" and len(board) == 0
    assert board.add(trial_rows(mauve=(0.1, 0.2), created_at=T1)) == 2
    assert board.add(trial_rows(mauve=(0.3, 0.4), created_at=T2)) == 2  # re-run: replaces
    assert board.add(trial_rows(mauve=(0.5, 0.6), created_at=T0)) == 2  # older result arriving late: ignored
    assert board.add(trial_rows(latent_dim=32, created_at=T0)) == 4
    df = board.frame()
    assert df["row_id"].is_unique and len(df) == 4
    rerun = df[df["row_id"].isin(ids(trial_rows()))].set_index("dataset")
    assert rerun.loc["embedded:wiki", "mauve"] == 0.3 and rerun.loc["embedded:shakespeare", "mauve"] == 0.4
    assert set(rerun["created_at"]) == {T2}
    assert not list(tmp_path.glob(".leaderboard.parquet.*"))  # no temp files left behind


def test_merge_from_two_machines_has_no_duplicates(tmp_path):
    a, b = lb.Leaderboard(tmp_path / "a.parquet"), lb.Leaderboard(tmp_path / "b.parquet")
    a.add(trial_rows(latent_dim=8, machine="box-a", created_at=T0) + trial_rows(latent_dim=16, machine="box-a",
                                                                               mauve=(0.1, 0.1), created_at=T0))
    b.add(trial_rows(latent_dim=16, machine="box-b", mauve=(0.7, 0.7), created_at=T1)
          + trial_rows(latent_dim=32, machine="box-b", created_at=T1))
    merged = lb.Leaderboard(tmp_path / "all" / "leaderboard.parquet")
    assert merged.merge(a.path, b.path) == 6
    assert merged.merge(b.path, a.path) == 6  # idempotent, order-independent
    df = merged.frame()
    assert df["row_id"].is_unique
    overlap = df[df["row_id"].isin(ids(trial_rows(latent_dim=16)))]
    assert set(overlap["machine"]) == {"box-b"} and set(overlap["mauve"]) == {0.7}
    assert lb.combine(a.frame(), b.frame(), a.frame())["row_id"].tolist() == df["row_id"].tolist()


def _writer(path: str, worker: int, n: int, barrier=None) -> None:
    board = lb.Leaderboard(path)
    if barrier is not None:
        barrier.wait(60)  # both processes start writing together
    for i in range(n):
        board.add(trial_rows(latent_dim=1000 * worker + i, machine=f"w{worker}"))


def test_concurrent_adds_from_two_processes_lose_no_rows(tmp_path):
    path, n = str(tmp_path / "leaderboard.parquet"), 12
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with pyarrow threads
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(path, w, n, barrier)) for w in (1, 2)]
    for p in procs:
        p.start()
    seen = [0]
    while any(p.is_alive() for p in procs):  # lock-free readers never see a torn or shrinking file
        if Path(path).exists():
            seen.append(len(lb.read(path)))
            assert seen[-1] >= seen[-2]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = lb.Leaderboard(path).frame()
    assert len(df) == 2 * 2 * n and df["row_id"].is_unique
    assert df["machine"].value_counts().to_dict() == {"w1": 2 * n, "w2": 2 * n}


def test_schema_errors_name_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(lb.LeaderboardError, match=re.escape(str(corrupt))):
        lb.read(corrupt)
    with pytest.raises(lb.LeaderboardError, match=re.escape(str(corrupt))):
        lb.Leaderboard(corrupt).add(trial_rows())
    assert corrupt.read_bytes() == b"PAR1 this is not parquet"  # never overwritten
    with pytest.raises(lb.LeaderboardError, match="no such leaderboard file"):
        lb.read(tmp_path / "missing.parquet")

    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"run": ["x"], "mauve": [0.1]}), foreign)
    with pytest.raises(lb.LeaderboardError, match=rf"{re.escape(str(foreign))}: not a leaderboard file: missing "
                                                  r"column\(s\) row_id"):
        lb.read(foreign)

    lb.Leaderboard(tmp_path / "good.parquet").add(trial_rows())
    table = pq.read_table(tmp_path / "good.parquet")
    bad = tmp_path / "bad_type.parquet"
    pq.write_table(table.set_column(table.schema.get_field_index("mauve"), "mauve", pa.array(["hi", "lo"])), bad)
    with pytest.raises(lb.LeaderboardError, match=rf"{re.escape(str(bad))}: column 'mauve' has type string"):
        lb.read(bad)


def test_unknown_columns_from_newer_writers_survive(tmp_path):
    lb.Leaderboard(tmp_path / "new.parquet").add(pd.DataFrame(trial_rows()).assign(mauve_std=[0.01, 0.02]))
    board = lb.Leaderboard(tmp_path / "old.parquet")
    board.merge(tmp_path / "new.parquet")
    board.add(trial_rows(latent_dim=64))
    df = board.frame()
    assert len(df) == 4 and df["mauve_std"].notna().sum() == 2


# -- rendering -------------------------------------------------------------------------------------

def board_rows():
    rows = []
    for repa in (True, False):
        for dim, m in ((8, 0.01), (16, 0.05), (32, 0.03)):
            rows += trial_rows(repa=repa, latent_dim=dim, mauve=(m + (0.1 if repa else 0), m / 2))
    rows += trial_rows(protocol="textldm-continuation/v2", protocol_hash="2222222222222222", mauve=(0.9, 0.9))
    rows += trial_rows(protocol_hash="3333333333333333", mauve=(0.8, 0.8))  # same name, other hash: own table
    rows += lb.make_rows("human", "ceiling", "<b>human</b> & ref", {}, {"embedded:wiki": {"mauve": 0.95}},
                         PROTOCOL, PHASH, 0, None, None, {"human": True})
    return rows


def _tables(markdown: str) -> list[tuple[str, str, list[list[str]]]]:
    """(title, note line, [header, *rows]) for every '## ' table (the |---| line is skipped)."""
    tables = []
    for line in markdown.splitlines():
        if line.startswith("## "):
            tables.append((line[3:], "", []))
        elif tables and line.startswith("| "):
            tables[-1][2].append([c.strip() for c in line[2:-2].split(" | ")])
        elif tables and line and not tables[-1][1]:
            tables[-1] = (tables[-1][0], line, tables[-1][2])
    return tables


def _table(markdown: str, title: str, phash: str) -> list[list[str]]:
    (rows,) = [rows for t, note, rows in _tables(markdown) if t == title and f"hash {phash[:12]}" in note]
    return rows


def _column(rows: list[list[str]], header: str) -> list[float]:
    i = rows[0].index(header)
    return [float(r[i]) if r[i] else float("nan") for r in rows[1:]]


def test_markdown_one_table_per_protocol_and_dataset_sorted():
    df = lb.combine(lb._normalise(board_rows()))
    text = lb.to_markdown(df)
    tables = _tables(text)
    # (v1, hash a1b2..) x 2 datasets, (v2) x 2, (v1, hash 3333..) x 2: the two v1 hashes are never mixed
    assert len(tables) == 6 and text.count("sorted by MAUVE (descending, best first)") == 6
    assert len({(t, note.split(" · ")[0]) for t, note, _ in tables}) == 6
    assert sum(t == f"{PROTOCOL} · embedded:wiki" for t, _, _ in tables) == 2
    rows = _table(text, f"{PROTOCOL} · embedded:wiki", PHASH)
    header = rows[0]
    assert header[:4] == ["#", "method", "sweep", "trial"] and "**MAUVE**" in header
    assert {"vae.repa.enabled", "vae.latent_dim", "eval.cfg_scale"} <= set(header)
    mauve = _column(rows, "**MAUVE**")
    assert len(mauve) == 7 and mauve == sorted(mauve, reverse=True) and mauve[0] == 95.0  # x100
    assert rows[1][1] == "human" and [r[0] for r in rows[1:]] == [str(i) for i in range(1, 8)]
    assert len(_table(text, f"{PROTOCOL} · embedded:wiki", "3333333333333333")) == 1 + 1

    by_rouge = lb.to_markdown(df, sort_by="rouge1", descending=False)
    assert "sorted by ROUGE-1 (ascending" in by_rouge
    rouge = _column(_table(by_rouge, f"{PROTOCOL} · embedded:wiki", PHASH), "**ROUGE-1**")
    assert rouge[:6] == sorted(rouge[:6]) and rouge[6] != rouge[6]  # the human row has no ROUGE: last
    assert lb.to_markdown(lb.empty_frame()).startswith("_No leaderboard rows")
    with pytest.raises(lb.LeaderboardError, match="unknown metric 'mauvee'.*mauve"):
        lb.to_markdown(df, sort_by="mauvee")


def test_a_table_without_the_sort_metric_ranks_by_its_own_accuracy():
    """A few-shot task's table has no MAUVE: under the default MAUVE sort it ranks by accuracy (higher first),
    numbered, and the continuation table next to it still ranks by MAUVE."""
    rows = trial_rows()
    for trial, accuracy in (("low", 0.25), ("high", 0.75), ("mid", 0.5)):
        rows += lb.make_rows("dlm", "s", trial, {}, {"embedded:wiki": {"accuracy": accuracy, "samples": 200}},
                             "fewshot/latentlm_lastword", "f" * 16, 0, 1.0, None, {"trial": trial})
    text = lb.to_markdown(lb.combine(lb._normalise(rows)))
    table = _table(text, "fewshot/latentlm_lastword · embedded:wiki", "f" * 16)
    assert "**accuracy**" in table[0] and "sorted by accuracy (descending, best first)" in text
    assert [r[table[0].index("trial")] for r in table[1:]] == ["high", "mid", "low"]
    assert [r[0] for r in table[1:]] == ["1", "2", "3"]
    assert "sorted by MAUVE (descending, best first)" in text


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_with_tables_and_axis_plots(tmp_path):
    rows = board_rows()
    df = lb.combine(lb._normalise(rows))
    page_path = lb.to_html(df, tmp_path / "page" / "board.html", title="REPA <ablation>")
    page = page_path.read_text()
    assert "http://" not in page and "https://" not in page
    parser = _Elements()
    parser.feed(page)
    for tag, attrs in parser.tags:
        for name in ("src", "href"):
            assert not attrs.get(name) or attrs[name].startswith("#"), (tag, attrs)
        assert tag not in ("link", "img", "iframe") and not (tag == "script" and "src" in attrs)
    tables = [a for t, a in parser.tags if t == "table" and a.get("class") == "leaderboard"]
    assert len(tables) == 6 and len({a["id"] for a in tables}) == 6
    assert {a["data-row-id"] for t, a in parser.tags if t == "tr" and "data-row-id" in a} == set(ids(rows))
    # v1/a1b2 varies latent_dim (3 values) and repa (2); cfg_scale is constant; the others vary nothing
    figures = [a for t, a in parser.tags if t == "figure" and a.get("class") == "axis-plot"]
    assert sorted(a["data-axis"] for a in figures) == ["vae.latent_dim", "vae.repa.enabled"]
    assert {a["data-kind"] for a in figures} == {"numeric", "categorical"}
    assert all(a["data-protocol-hash"] == PHASH for a in figures)
    assert page.count("<svg") == 2 and page.count('class="ceiling"') >= 1
    assert "<b>human</b>" not in page and "&lt;b&gt;human&lt;/b&gt; &amp; ref" in page
    assert "<title>REPA &lt;ablation&gt;</title>" in page
    assert "addEventListener(\"click\"" in page  # sortable headers


def test_render_writes_markdown_and_html(tmp_path):
    (tmp_path / "sweep").mkdir()
    lb.Leaderboard(tmp_path / "sweep").add(board_rows())
    md_path, html_path = lb.render(tmp_path / "sweep" / "leaderboard.parquet", tmp_path / "out")
    assert md_path == tmp_path / "out" / "leaderboard.md" and html_path.parent == md_path.parent
    assert md_path.read_text().count("| # |") == 6 and 'class="leaderboard"' in html_path.read_text()


# -- command line ----------------------------------------------------------------------------------

def test_cli_shows_merges_and_writes_html(tmp_path, capsys):
    (tmp_path / "sweep_a").mkdir()
    lb.Leaderboard(tmp_path / "sweep_a").add(trial_rows(latent_dim=8) + trial_rows(latent_dim=16))
    lb.Leaderboard(tmp_path / "b.parquet").add(trial_rows(latent_dim=16, created_at=T1)
                                               + trial_rows(latent_dim=32, mauve=(0.5, 0.5)))
    out_html, merged = tmp_path / "site" / "index.html", tmp_path / "merged.parquet"
    rc = cli.main(["leaderboard", str(tmp_path / "sweep_a"), str(tmp_path / "b.parquet"), "--html", str(out_html),
                   "--merge-into", str(merged)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    tables = _tables(captured.out)
    assert len(tables) == 2 and all(len(rows) == 1 + 3 for _, _, rows in tables)
    assert "sorted by MAUVE (descending" in captured.out and "50.00" in captured.out
    assert out_html.is_file() and out_html.read_text().count('class="leaderboard"') == 2
    assert len(lb.read(merged)) == 6 and "merged 6 row(s)" in captured.err

    rc = cli.main(["leaderboard", str(merged), "--sort", "rouge1"])
    assert rc == 0 and "sorted by ROUGE-1" in capsys.readouterr().out


def test_cli_user_errors_exit_2(tmp_path, capsys):
    missing = tmp_path / "nowhere.parquet"
    assert cli.main(["leaderboard", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_text("junk")
    assert cli.main(["leaderboard", str(tmp_path / "junk.parquet")]) == 2
    assert "junk.parquet" in capsys.readouterr().err
    (tmp_path / "ok").mkdir()
    lb.Leaderboard(tmp_path / "ok").add(trial_rows())
    assert cli.main(["leaderboard", str(tmp_path / "ok"), "--sort", "nope", "--merge-into", str(tmp_path / "m")]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err and not (tmp_path / "m").exists()


# -- protocol object, progressions, spreads ----------------------------------------------------------

SCORING = "5c0e5c0e5c0e5c0e"


def _info(phash, steps=50, **extra):
    return {"name": PROTOCOL, "version": 1, "hash": phash, "scoring_hash": SCORING,
            "sampler": {"steps": steps, "cfg_scale": 7.0}, **extra}


def _progression(last="done", steps=(1, 10, 20), total=20):
    return {"prompt": "The river", "reference": "flows on.", "total_steps": total, "steps": list(steps),
            "texts": [f"text {s}" for s in steps[:-1]] + [last]}


def steps_rows(steps, seed=0, mauve=0.5, mauve_std=None, protocol_info=True, progression=None, method="textldm"):
    phash = f"{steps:04d}" + "ab" * 6
    wiki = {"mauve": mauve, "rouge1": 0.3, "gen_ppl": 80.0, "gen_ppl_std": 4.25, "entropy": 4.5,
            "diversity": 0.61, "samples": 32}
    if mauve_std is not None:
        wiki["mauve_std"] = mauve_std
    return lb.make_rows(method, "steps", f"t{steps}-{seed}", {"eval.steps": steps}, {"embedded:wiki": wiki}, PROTOCOL,
                        phash, seed, 10.0, None, {"eval": {"steps": steps}}, machine="m", created_at=T0,
                        protocol_info=_info(phash, steps) if protocol_info else None,
                        progressions={"embedded:wiki": progression} if progression else None)


def test_make_rows_protocol_and_progression_columns():
    (row,) = steps_rows(10, progression=_progression())
    assert lb.COLUMNS[-3:] == ("protocol_json", "progression_json", "evidence_json") and list(row) == list(lb.COLUMNS)
    assert row["protocol_json"] == lb.canonical_json(_info(row["protocol_hash"], 10))
    assert row["protocol_json"].startswith('{"hash":"0010') and '"scoring_hash":"5c0e' in row["protocol_json"]
    assert row["progression_json"] == lb.canonical_json(_progression())
    plain = trial_rows()
    assert all(r["protocol_json"] is None and r["progression_json"] is None for r in plain)
    # only the dataset named in progressions gets one
    rows = lb.make_rows("textldm", "s", "t", {}, {"a": {"mauve": 0.1}, "b": {"mauve": 0.2}}, PROTOCOL, PHASH, 0,
                        None, None, {}, protocol_info=_info(PHASH), progressions={"b": _progression()})
    assert [r["progression_json"] is None for r in rows] == [True, False]
    assert rows[0]["protocol_json"] == rows[1]["protocol_json"]


@pytest.mark.parametrize("info, message", [
    ({"name": PROTOCOL, "hash": "ffff", "scoring_hash": SCORING}, r"'hash' 'ffff' is not the row's protocol_hash"),
    ({"hash": PHASH}, r"non-empty string 'scoring_hash'"),
    ({"name": "other/v9", "hash": PHASH, "scoring_hash": SCORING}, r"'name' 'other/v9' is not the row's protocol"),
    (["not", "a", "mapping"], r"expected a JSON object"),
])
def test_make_rows_rejects_a_bad_protocol_object(info, message):
    with pytest.raises(lb.LeaderboardError, match="protocol_info: .*" + message):
        lb.make_rows("textldm", "s", "t", {}, {"d": {"mauve": 0.5}}, PROTOCOL, PHASH, 0, None, None, {},
                     protocol_info=info)


@pytest.mark.parametrize("change, message", [
    ({"texts": ["only one"]}, r"'steps' and 'texts' differ in length \(3 vs 1\)"),
    ({"steps": [1, 10, 10]}, r"'steps' must increase strictly"),
    ({"steps": [1, 10, 21]}, r"'steps' must increase strictly within \[0, total_steps=20\]"),
    ({"steps": [1, 2.5, 3]}, r"'steps' must be a non-empty list of integers"),
    ({"total_steps": 0}, r"'total_steps' must be a positive integer"),
    ({"prompt": None}, r"'prompt' must be a string"),
    ({"texts": ["a", "b", 3]}, r"'texts' must be a list of strings"),
])
def test_make_rows_rejects_a_bad_progression_naming_the_dataset(change, message):
    progression = {**_progression(), **change}
    with pytest.raises(lb.LeaderboardError, match=r"progressions\['embedded:wiki'\]: " + message):
        steps_rows(20, progression=progression)
    with pytest.raises(lb.LeaderboardError, match=r"progressions\['nowhere'\]: no such dataset in results"):
        lb.make_rows("textldm", "s", "t", {}, {"d": {"mauve": 0.5}}, PROTOCOL, PHASH, 0, None, None, {},
                     progressions={"nowhere": _progression()})


def test_files_written_without_the_new_columns_still_read(tmp_path):
    """A file from before protocol_json/progression_json: reads (columns null), renders, merges with new rows."""
    old_columns = [c for c in lb.COLUMNS if c not in ("protocol_json", "progression_json")]
    old = pd.DataFrame(trial_rows())[old_columns]
    table = pa.Table.from_pandas(old, preserve_index=False).replace_schema_metadata({lb.SCHEMA_KEY: b"1"})
    pq.write_table(table, tmp_path / "old.parquet")
    df = lb.read(tmp_path / "old.parquet")
    assert list(df.columns) == list(lb.COLUMNS) and df["protocol_json"].isna().all()
    assert df["progression_json"].isna().all() and len(df) == 2
    assert 'id="progression"' in lb.html_page(df) and "No row has a recorded denoising progression" in lb.html_page(df)
    board = lb.Leaderboard(tmp_path / "all.parquet")
    board.merge(tmp_path / "old.parquet")
    assert board.add(steps_rows(10, progression=_progression())) == 3
    assert board.frame()["progression_json"].notna().sum() == 1


def test_markdown_shows_results_not_bookkeeping_and_no_spread_for_one_seed():
    """The harness's per-row extras: MAUVE's k-means / sampling spreads are shown x100 under their names;
    timings and sample/seed counts stay on the HTML page only; a single-seed row (the human ceiling) shows
    plain values, not "± 0"."""
    spreads = {"mauve_std": 0.2, "mauve_kmeans_std": 0.1, "mauve_sampling_std": 0.15, "gen_ppl": 80.0,
               "gen_ppl_std": 4.0, "eval_seconds": 91.5, "sample_seconds_per_seq": 0.8, "samples": 16, "seeds": 2}
    model = lb.make_rows("dlm", "s", "t", {}, {"embedded:wiki": {"mauve": 0.25, **spreads}}, PROTOCOL, PHASH, 0,
                         10.0, None, {}, machine="m", created_at=T0)
    human = lb.make_rows("human", "s", "human-ceiling", {}, {"embedded:wiki": {
        "mauve": 0.98, "mauve_std": 0.01, "gen_ppl": 35.8, "gen_ppl_std": 0.0, "samples": 16, "seeds": 1}},
        PROTOCOL, PHASH, 0, None, None, {}, machine="m", created_at=T0)
    df = lb.combine(lb._normalise(model + human))
    table = _table(lb.to_markdown(df), f"{PROTOCOL} · embedded:wiki", PHASH)
    header = table[0]
    assert header[header.index("**MAUVE**") + 1:header.index("seed")] == [  # entropy always beside Gen-PPL
        "Gen-PPL", "entropy", "MAUVE k-means std", "MAUVE sampling std"]
    rows = {r[header.index("method")]: r for r in table[1:]}
    assert rows["dlm"][header.index("**MAUVE**")] == "25.00 ± 20.00"
    assert rows["dlm"][header.index("MAUVE k-means std")] == "10.00" and rows["dlm"][header.index("Gen-PPL")] == "80 ± 4"
    assert rows["human"][header.index("**MAUVE**")] == "98.00" and rows["human"][header.index("Gen-PPL")] == "35.8"
    page = lb.html_page(df)
    assert 'data-col="eval_seconds"' in page and 'data-col="seeds"' in page


@pytest.mark.parametrize("column", ["protocol_json", "progression_json"])
def test_new_json_columns_must_hold_objects(tmp_path, column):
    rows = pd.DataFrame(steps_rows(10, progression=_progression()))
    rows[column] = "[1, 2]"
    with pytest.raises(lb.LeaderboardError, match=rf"{column} is not a JSON object"):
        lb.Leaderboard(tmp_path / "y.parquet").add(rows)  # the writer checks too
    pq.write_table(lb._to_table(rows), tmp_path / "x.parquet")
    with pytest.raises(lb.LeaderboardError, match=rf"x.parquet: row [0-9a-f]+: {column} is not a JSON object"):
        lb.read(tmp_path / "x.parquet")


def test_std_metrics_shown_as_mean_plus_minus_std_in_curated_order(tmp_path):
    rows = steps_rows(10, mauve=0.5, mauve_std=0.0123) + steps_rows(10, seed=1, mauve=0.4)
    df = lb.combine(lb._normalise(rows))
    expanded = lb.expand(df)
    assert lb.metric_columns(expanded) == [*lb.METRICS, "gen_ppl", "entropy", "diversity", "gen_ppl_std",
                                           "mauve_std", "samples"]
    text = lb.to_markdown(df)
    table = _table(text, f"{PROTOCOL} · embedded:wiki", rows[0]["protocol_hash"])
    header = table[0]
    assert header[header.index("**MAUVE**") + 1:header.index("seed")] == ["Gen-PPL", "entropy", "diversity"]
    assert not any(h.endswith("_std") for h in header)
    mauve = [r[header.index("**MAUVE**")] for r in table[1:]]
    assert mauve == ["50.00 ± 1.23", "40.00"]  # std scaled x100 like MAUVE; the row without a std: mean only
    assert [r[header.index("Gen-PPL")] for r in table[1:]] == ["80 ± 4", "80 ± 4"]  # the mean's decimals
    assert "a ± b = mean ± std over evaluation seeds" in text
    assert lb._fmt_metric_std("gen_ppl", 123.456, 7.891) == "123.5 ± 7.9"
    assert lb._fmt_metric_std("mauve", 0.5, float("nan")) == "50.00"
    # sorting by a spread shows it as a column of its own
    assert "**mauve_std**" in lb.to_markdown(df, sort_by="mauve_std")

    page = lb.html_page(df)
    parser = _Elements()
    parser.feed(page)
    cols = [a["data-col"] for t, a in parser.tags if t == "th" and "data-col" in a]
    assert "mauve_std" not in cols and "gen_ppl_std" not in cols
    assert cols.index("mauve") < cols.index("gen_ppl") < cols.index("entropy") < cols.index("diversity") < cols.index(
        "samples")
    assert '>50.00 ± 1.23</td>' in page and 'data-value="0.5" title="mean ± std over evaluation seeds"' in page


def test_human_ceiling_rows_are_ranked_and_italic():
    rows = steps_rows(50, mauve=0.5) + steps_rows(50, mauve=0.95, method="human")
    page = lb.html_page(lb.combine(lb._normalise(rows)))
    parser = _Elements()
    parser.feed(page)
    trs = [a for t, a in parser.tags if t == "tr" and "data-row-id" in a]
    assert [a.get("class") for a in trs] == ["ceiling", None]  # ranked first (best MAUVE), styled italic
    assert "italic rows = reference ceiling" in page


def _figures(page):
    parser = _Elements()
    parser.feed(page)
    return [a for t, a in parser.tags if t == "figure" and a.get("class") == "axis-plot"], parser


def test_axis_plots_group_by_scoring_hash_across_sampler_protocols():
    # a steps sweep: every step count is its own protocol hash, all share one scoring hash
    rows = (steps_rows(10, mauve=0.3, mauve_std=0.02) + steps_rows(20, mauve=0.4, mauve_std=0.03)
            + steps_rows(50, mauve=0.5) + steps_rows(50, seed=1, mauve=0.7))
    df = lb.combine(lb._normalise(rows))
    plots = lb.axis_plots(df)
    assert [(k["by"], k["scoring_hash"], axis) for k, axis, _ in plots] == [("scoring_hash", SCORING, "eval.steps")]
    assert plots[0][0]["protocol_hashes"] == sorted({r["protocol_hash"] for r in rows})
    page = lb.html_page(df)
    figures, parser = _figures(page)
    (figure,) = figures
    assert figure["data-scoring-hash"] == SCORING and len(figure["data-protocol-hash"].split()) == 3
    assert "span 3 protocol hashes" in page and "ranked in separate tables" in page
    # the tables stay one per protocol hash
    assert len([a for t, a in parser.tags if t == "table" and a.get("class") == "leaderboard"]) == 3
    # 10 and 20 steps: one row each -> its own std over seeds (x100: 2 and 3); 50 steps: two seeds -> across rows
    bars = [a for t, a in parser.tags if t == "path" and a.get("class") == "errorbar"]
    assert sorted(a["data-source"] for a in bars) == ["rows", "seeds", "seeds"]
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert "± 2 (the row&#x27;s std over seeds)" in svg and "± 3 (the row&#x27;s std over seeds)" in svg
    assert "± 14 (std across 2 rows)" in svg  # std(50, 70) = 14.1
    assert "the row&#x27;s own ±1 std over evaluation seeds (mauve_std)" in page

    # without protocol objects each hash is its own group: one value per group, so no plot at all
    legacy = lb.combine(lb._normalise([r for s in (10, 20, 50) for r in steps_rows(s, protocol_info=False)]))
    assert lb.axis_plots(legacy) == []
    assert lb.scoring_key(None, "abc") == ("protocol_hash", "abc")
    assert lb.scoring_key('{"scoring_hash": "s1"}', "abc") == ("scoring_hash", "s1")


def test_gen_ppl_axis_plots_come_with_entropy():
    rows = steps_rows(10) + steps_rows(20) + steps_rows(50)
    df = lb.combine(lb._normalise(rows))
    assert [axis for _, axis, _ in lb.axis_plots(df, "mauve")] == ["eval.steps"]
    plots = lb.axis_plots(df, "gen_ppl")
    assert [(axis, 'data-metric="gen_ppl"' in fig, 'data-metric="entropy"' in fig) for _, axis, fig in plots] == [
        ("eval.steps", True, False), ("eval.steps", False, True)]
    page = lb.html_page(df, sort_by="gen_ppl")
    assert "Ablation axes: Gen-PPL and unigram entropy" in page
    assert page.index('data-metric="gen_ppl"') < page.index('data-metric="entropy"')


def test_progression_view_escapes_script_and_markup(tmp_path):
    nasty = '</script><script>window.pwned=1</script><b>bold</b> & <!-- "q" \u2028'
    first = steps_rows(50, mauve=0.9, progression=_progression(last="plain text"))
    second = steps_rows(20, mauve=0.5, progression={**_progression(last=nasty), "prompt": "<b>P</b>"})
    df = lb.combine(lb._normalise(first + second + steps_rows(10, mauve=0.1)))
    page = lb.to_html(df, tmp_path / "p.html").read_text()
    parser = _Elements()
    parser.feed(page)
    scripts = [a for t, a in parser.tags if t == "script"]
    assert len(scripts) == 3 and [a.get("type") for a in scripts].count("application/json") == 1
    assert not [t for t, a in parser.tags if t == "b"]
    assert "<b>" not in page and "window.pwned" in page  # present, but only as text
    # the embedded data reads back to exactly the stored progressions
    start = page.index('<script type="application/json" id="progression-data">') + len(
        '<script type="application/json" id="progression-data">')
    blob = page[start:page.index("</script>", start)]
    assert "<" not in blob and "\u2028" not in blob
    data = json.loads(blob)
    assert set(data) == {first[0]["row_id"], second[0]["row_id"]}
    assert data[second[0]["row_id"]]["texts"][-1] == nasty and data[second[0]["row_id"]]["prompt"] == "<b>P</b>"
    # the select lists both (table order: protocol hash 0010.. < 0020.. < 0050..), the first one is rendered
    options = [a for t, a in parser.tags if t == "option"]
    assert [a["value"] for a in options] == [second[0]["row_id"], first[0]["row_id"]]
    assert "selected" in options[0]
    view = page[page.index('id="progression-view"'):page.index("</table>", page.index('id="progression-view"'))]
    assert f'data-row-id="{second[0]["row_id"]}"' in view
    assert "&lt;/script&gt;&lt;script&gt;window.pwned=1" in view and "&lt;b&gt;P&lt;/b&gt;" in view
    assert [m for m in re.findall(r'<th scope="row">([^<]*)</th>', view)] == [
        "prompt", "step 1 / 20", "step 10 / 20", "step 20 / 20", "reference"]
    # rows with a progression link to it from their table
    assert page.count('href="#progression=') == 2


def test_a_rounded_value_keeps_its_decimals_so_its_interval_is_readable():
    """2.9998 with CI [2.966, 3.034] printed as "3 [3, 3]" hid the interval; exact values stay short."""
    from latentlm.platform.leaderboard import _fmt_metric, _fmt_metric_ci
    assert _fmt_metric_ci("entropy", 2.9998, 2.9664, 3.0335) == "3.000 [2.966, 3.034]"
    assert _fmt_metric("gen_ppl", 80.0) == "80" and _fmt_metric("gen_ppl", 41.1923) == "41.19"
    assert _fmt_metric("entropy", 0.0) == "0" and _fmt_metric("gen_ppl", 13184.3) == "1.318e+04"
