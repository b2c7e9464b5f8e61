"""Leaderboard: row identity, de-duplicating storage (re-adds, merges across machines, concurrent writers),
schema checks that name the file, Markdown/HTML rendering and the ``latentlm leaderboard`` command.
Fast and Ray-free."""
from __future__ import annotations

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
