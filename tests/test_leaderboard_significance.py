"""Leaderboard features built on per-prompt evidence (``platform/leaderboard/``): CI cells, significance marks
(paired bootstrap against the best *model*), the Gen-PPL entropy flag, the Gen-PPL–entropy plane, protocol
separation, and ``latentlm compare``. Rows carry synthetic evidence (numpy, fixed seeds) whose statistics are the
stored values, so every mark and p-value is deterministic. Fast and Ray-free."""
from __future__ import annotations

import html
import json
import math
import re

import numpy as np
import pytest

from latentlm.platform import cli
from latentlm.platform import leaderboard as lb
from latentlm.platform.evaluation import significance as sig

V3, V2 = "textldm-continuation/v3", "textldm-continuation/v2"
PHASH3, PHASH3_SAMPLER, PHASH2 = "3333aaaa3333aaaa", "3333bbbb3333bbbb", "2222aaaa2222aaaa"
SCORING3 = "5c0e5c0e5c0e5c0e"
WIKI, SHAKES = "embedded:wiki", "embedded:shakespeare"
T0 = "2026-11-23T10:00:00.000000+00:00"
N, SEEDS, BUCKETS = 64, 2, 4
DIFFICULTY = np.random.default_rng(0).normal(0, 0.1, N)  # shared per-prompt difficulty: what pairing cancels
REF_LABELS = (np.arange(N) % BUCKETS).tolist()  # uniform reference histogram


def evidence(seed: int, rouge: float = 0.5, entropy: float = 5.0, nll: float = 3.0, collapse: float = 0.05,
             n: int = N, seeds: int = SEEDS, paired: bool = True) -> dict:
    """Per-prompt evidence in the harness's format: ROUGE-1 around ``rouge`` (+ the shared difficulty), unigram
    entropy, 20 tokens per generation, Gen-PPL ~ exp(``nll``), MAUVE labels with a fraction ``collapse`` of the
    generations in cluster 0 (the more collapse, the lower MAUVE). ``paired=False``: no ROUGE (a human row)."""
    rng = np.random.default_rng(seed)
    per_prompt = {"entropy": (entropy + rng.normal(0, 0.05, (seeds, n))).tolist(),
                  "gen_tokens": np.full((seeds, n), 20.0).tolist()}
    if paired:
        per_prompt["rouge1"] = (rouge + DIFFICULTY[:n] + rng.normal(0, 0.05, (seeds, n))).tolist()
    tokens = np.full((seeds, n), 20)
    gen = np.where(rng.random((seeds, 2, n)) < collapse, 0, np.asarray(REF_LABELS[:n]) % BUCKETS)
    return {"n": n, "seeds": list(range(seeds)), "per_prompt": per_prompt,
            "genppl": {"nll": (tokens * (nll + rng.normal(0, 0.1, (seeds, n)))).tolist(), "tokens": tokens.tolist()},
            "mauve": {"buckets": BUCKETS, "kmeans_seeds": [25, 26],
                      "ref_labels": [[REF_LABELS[:n]] * 2] * seeds, "gen_labels": gen.tolist()}}


def tied_copy(ev: dict, seed: int, shift: float = -0.002) -> dict:
    """``ev`` with its ROUGE-1 moved by ``shift`` plus tiny per-prompt noise: a row statistically tied with it."""
    out = json.loads(json.dumps(ev))
    rouge = np.asarray(out["per_prompt"]["rouge1"])
    out["per_prompt"]["rouge1"] = (rouge + shift + np.random.default_rng(seed).normal(0, 0.0005, rouge.shape)).tolist()
    return out


def values(ev: dict) -> dict[str, float]:
    """The row values the harness stores: exactly the evidence's statistics."""
    return {m: sig.statistic(ev, m) for m in lb.evidence_metrics(ev)}


def info(phash: str = PHASH3, scoring: str = SCORING3, name: str = V3) -> dict:
    return {"name": name, "version": 3, "hash": phash, "scoring_hash": scoring, "scoring": {"ci_level": 0.95}}


def v3_rows(method: str, trial: str, evidences: dict[str, dict | None], phash: str = PHASH3, scoring: str = SCORING3,
            extra: dict | None = None, stored: dict | None = None) -> list[dict]:
    """One v3 row per dataset: stored metrics = the evidence's statistics (``stored`` overrides, ``extra`` adds);
    a dataset mapped to None gets a row without evidence (``stored`` then gives its values)."""
    results = {d: {**(values(ev) if ev else {}), **(stored or {}), **(extra or {})} for d, ev in evidences.items()}
    return lb.make_rows(method, "sweep", trial, {}, results, V3, phash, 0, 60.0, None, {"trial": trial, "p": phash},
                        machine="m", created_at=T0, protocol_info=info(phash, scoring),
                        evidences={d: ev for d, ev in evidences.items() if ev})


def plain_rows(method: str, trial: str, metrics: dict, protocol: str = V3, phash: str = PHASH3,
               dataset: str = WIKI) -> list[dict]:
    """A row with the given metrics and no evidence or protocol object."""
    return lb.make_rows(method, "sweep", trial, {}, {dataset: metrics}, protocol, phash, 0, 60.0, None,
                        {"trial": trial, "protocol": protocol}, machine="m", created_at=T0)


def frame(rows: list[dict]):
    return lb.combine(lb._normalise(rows))


# -- parsing what was rendered -------------------------------------------------------------------------

def md_tables(markdown: str) -> list[dict]:
    """Every '## ' table: title, note, header, rows (cells by header) and the lines after it (legends)."""
    tables = []
    for line in markdown.splitlines():
        if line.startswith("## "):
            tables.append({"title": line[3:], "note": "", "header": [], "rows": [], "after": []})
        elif not tables or not line:
            continue
        elif line.startswith("| "):
            cells = [c.strip() for c in line[2:-2].split(" | ")]
            table = tables[-1]
            if not table["header"]:
                table["header"] = cells
            else:
                table["rows"].append(dict(zip(table["header"], cells)))
        elif line.startswith("|---"):
            continue
        elif not tables[-1]["note"]:
            tables[-1]["note"] = line
        else:
            tables[-1]["after"].append(line)
    return tables


def md_table(markdown: str, protocol: str = V3, dataset: str = WIKI) -> dict:
    (table,) = [t for t in md_tables(markdown) if t["title"] == f"{protocol} · {dataset}"]
    return table


def html_boards(page: str) -> list[dict]:
    """Every board section: its attributes, header columns, rows (id, tr attributes, cells by column)."""
    boards = []
    for chunk in page.split('<section class="board"')[1:]:
        chunk = chunk[:chunk.index("</section>")]
        attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', chunk[:chunk.index(">")]))
        columns = re.findall(r'<th [^>]*data-col="([^"]+)"', chunk)
        rows = []
        for row_id, tr_attrs, body in re.findall(r'<tr data-row-id="([^"]+)"([^>]*)>(.*?)</tr>', chunk):
            cells = re.findall(r"<td([^>]*)>(.*?)</td>", body)
            rows.append({"row_id": row_id, "attrs": tr_attrs,
                         "cells": {c: (html.unescape(text), a) for c, (a, text) in zip(columns, cells)}})
        legends = [html.unescape(t) for t in re.findall(r'<p class="legend">(.*?)</p>', chunk)]
        boards.append({**attrs, "columns": columns, "rows": rows, "legends": legends,
                       "meta": html.unescape(re.search(r'<p class="board-meta">(.*?)</p>', chunk).group(1))})
    return boards


def html_board(page: str, protocol: str = V3, dataset: str = WIKI) -> dict:
    (board,) = [b for b in html_boards(page) if b["data-protocol"] == protocol and b["data-dataset"] == dataset]
    return board


def by_trial(table_rows: list[dict]) -> dict[str, dict]:
    return {r["trial"]: r for r in table_rows}


def by_id(board: dict) -> dict[str, dict]:
    return {r["row_id"]: r for r in board["rows"]}


# -- 1. CI cells ---------------------------------------------------------------------------------------

def ci_board():
    with_ci = plain_rows("textldm", "with-ci", {
        "mauve": 0.5, "mauve_ci_low": 0.45, "mauve_ci_high": 0.55, "mauve_std": 0.02,  # CI wins over the std
        "rouge1": 0.3123, "rouge1_ci_low": 0.3, "rouge1_ci_high": 0.325,
        "gen_ppl": 30.25, "gen_ppl_ci_low": 28.0, "gen_ppl_ci_high": 33.5, "entropy": 5.0})
    with_ci[0]["protocol_json"] = lb.protocol_json(V3, PHASH3, info())  # CI level for the note
    no_ci = plain_rows("textldm", "no-ci", {"mauve": 0.4, "rouge1": 0.25, "gen_ppl": 41.0, "entropy": 5.1,
                                            "rouge1_ci_low": 0.2})  # half a CI is no CI
    return frame(with_ci + no_ci)


def test_ci_cells_in_markdown_are_value_and_bracketed_bounds_scaled_like_the_metric():
    table = md_table(lb.to_markdown(ci_board()))
    rows = by_trial(table["rows"])
    # bounds x100 with the value's decimals for percent metrics, the value's decimals for Gen-PPL
    assert rows["with-ci"]["**MAUVE**"] == "50.00 [45.00, 55.00]"
    assert rows["with-ci"]["ROUGE-1"] == "31.23 [30.00, 32.50]"
    assert rows["with-ci"]["Gen-PPL"] == "30.25 [28.00, 33.50]"
    # a row without a CI (or with one bound only) shows just the value, not "[, ]" or a stray bound
    assert rows["no-ci"]["**MAUVE**"] == "40.00" and rows["no-ci"]["ROUGE-1"] == "25.00"
    assert rows["no-ci"]["Gen-PPL"] == "41"
    # the bounds are folded into the metric's cell, never columns of their own
    assert not [h for h in table["header"] if "ci_" in h or h.endswith("_std")]
    assert "a [l, h] = value and its 95% bootstrap CI" in table["note"]


def test_ci_cells_in_html_and_sorting_by_a_bound_shows_it_as_a_column():
    board = html_board(lb.html_page(ci_board()))
    assert not [c for c in board["columns"] if "_ci_" in c]
    rows = {r["cells"]["trial"][0]: r["cells"] for r in board["rows"]}
    text, attrs = rows["with-ci"]["mauve"]
    assert text == "50.00 [45.00, 55.00]" and 'title="value [bootstrap CI]' in attrs
    assert 'data-value="0.5"' in attrs  # sorting uses the value, not the text
    assert rows["with-ci"]["gen_ppl"][0] == "30.25 [28.00, 33.50]"
    assert rows["no-ci"]["mauve"][0] == "40.00" and "title=" not in rows["no-ci"]["mauve"][1]
    assert "a [l, h] = value and its 95% bootstrap CI" in board["meta"]
    # the sort metric is never folded away
    assert "**mauve_ci_low**" in lb.to_markdown(ci_board(), sort_by="mauve_ci_low")


# -- 2. significance marks -----------------------------------------------------------------------------

EV_A = evidence(1, rouge=0.5)
EV_B = tied_copy(EV_A, 2)            # A's scores plus tiny noise: statistically tied with A
EV_C = evidence(3, rouge=0.4)        # 0.1 ROUGE-1 below A on every prompt: clearly worse


def abc_rows(**kw) -> list[dict]:
    return v3_rows("textldm", "A", {WIKI: EV_A}, **kw) + v3_rows("textldm", "B", {WIKI: EV_B}, **kw) + v3_rows(
        "textldm", "C", {WIKI: EV_C}, **kw)


def test_marks_tie_with_the_best_and_not_the_clearly_worse_row():
    assert values(EV_A)["rouge1"] > values(EV_B)["rouge1"] > values(EV_C)["rouge1"]
    df = frame(abc_rows())
    table = md_table(lb.to_markdown(df, sort_by="rouge1"))
    assert table["header"][:3] == ["#", lb.TIE_MARK, "method"]
    assert [(r["trial"], r[lb.TIE_MARK]) for r in table["rows"]] == [("A", "**best**"), ("B", "≈"), ("C", "")]
    (legend,) = table["after"]
    assert "best = the top model row by ROUGE-1" in legend and "p < 0.05" in legend and "1000 replicates" in legend
    assert "not tested" not in legend  # every row has evidence

    board = html_board(lb.html_page(df, sort_by="rouge1"))
    assert board["columns"][:2] == ["rank", "_mark"]
    marks = [(r["cells"]["trial"][0], r["cells"]["_mark"][0], re.search(r'data-mark="(\w+)"', r["attrs"]))
             for r in board["rows"]]
    assert [(t, m, d and d.group(1)) for t, m, d in marks] == [("A", "best", "best"), ("B", "≈", "tied"),
                                                               ("C", "", None)]
    assert any("best = the top model row by ROUGE-1" in legend for legend in board["legends"])


def test_marks_are_deterministic():
    df = frame(abc_rows())
    first = lb.to_markdown(df, sort_by="rouge1")
    lb._tied_with_best.cache_clear()
    assert lb.to_markdown(df, sort_by="rouge1") == first


def test_marks_follow_the_direction_of_the_table():
    # Gen-PPL ranked ascending: the lowest Gen-PPL is the best; a far higher one is significantly worse
    rows = (v3_rows("textldm", "low-ppl", {WIKI: evidence(1, nll=3.0)})
            + v3_rows("textldm", "high-ppl", {WIKI: evidence(2, nll=3.5)}))
    table = md_table(lb.to_markdown(frame(rows), sort_by="gen_ppl", descending=False))
    assert [(r["trial"], r[lb.TIE_MARK]) for r in table["rows"]] == [("low-ppl", "**best**"), ("high-ppl", "")]


def test_the_human_ceiling_is_never_the_best_even_with_the_top_score():
    human_ev = evidence(9, entropy=5.5, paired=False)  # a far higher entropy than any model, with evidence
    rows = abc_rows() + v3_rows("human", "human-ceiling", {WIKI: human_ev})
    df = frame(rows)
    table = md_table(lb.to_markdown(df, sort_by="entropy"))  # ranked by entropy: the human row is first
    first = table["rows"][0]
    assert first["method"] == "human" and first["#"] == "1" and first[lb.TIE_MARK] == ""
    best = [r["trial"] for r in table["rows"] if r[lb.TIE_MARK] == "**best**"]
    assert len(best) == 1 and best[0] != "human-ceiling"
    assert "the human ceiling is a bound, not a competitor, and is not tested" in table["after"][0]


def test_a_floor_is_never_the_best_but_is_tested_against_the_best_model():
    # A top-token floor has the lowest Gen-PPL of all: ranked first ascending, but the yardstick is the best model
    floor_ev = evidence(7, rouge=0.1, entropy=0.5, nll=0.2)
    rows = abc_rows() + v3_rows("floor", "floor:top-token", {WIKI: floor_ev})
    table = md_table(lb.to_markdown(frame(rows), sort_by="gen_ppl", descending=False))
    first = table["rows"][0]
    assert first["trial"] == "floor:top-token" and first[lb.TIE_MARK] == ""  # far below the models: not tied
    best = [r for r in table["rows"] if r[lb.TIE_MARK] == "**best**"]
    assert len(best) == 1 and best[0]["method"] == "textldm"
    assert "a floor is never the best" in table["after"][0]
    # a floor that the metric cannot tell from the best model is marked tied: the metric is not discriminating
    twin = tied_copy(EV_A, 8, shift=0.002)  # even slightly above A on ROUGE-1
    rows = abc_rows() + v3_rows("floor", "floor:prompt-repeat", {WIKI: twin})
    table = md_table(lb.to_markdown(frame(rows), sort_by="rouge1"))
    assert [(r["trial"], r[lb.TIE_MARK]) for r in table["rows"]] == [
        ("floor:prompt-repeat", "≈"), ("A", "**best**"), ("B", "≈"), ("C", "")]


def test_rows_without_evidence_get_no_mark_and_the_legend_counts_them():
    no_evidence = v3_rows("textldm", "D", {WIKI: None}, stored={"rouge1": 0.47})
    df = frame(abc_rows() + no_evidence)
    table = md_table(lb.to_markdown(df, sort_by="rouge1"))
    rows = by_trial(table["rows"])
    assert rows["D"][lb.TIE_MARK] == "" and rows["A"][lb.TIE_MARK] == "**best**" and rows["B"][lb.TIE_MARK] == "≈"
    assert "1 row(s) without per-prompt evidence for ROUGE-1 are not tested" in table["after"][0]
    board = html_board(lb.html_page(df, sort_by="rouge1"))
    assert by_id(board)[no_evidence[0]["row_id"]]["cells"]["_mark"][0] == ""
    assert any("1 row(s) without per-prompt evidence" in legend for legend in board["legends"])


def test_no_marks_column_without_two_rows_with_evidence():
    one = v3_rows("textldm", "A", {WIKI: EV_A}) + v3_rows("textldm", "D", {WIKI: None}, stored={"rouge1": 0.4})
    v2 = plain_rows("textldm", "v2-a", {"rouge1": 0.5}, V2, PHASH2) + plain_rows("textldm", "v2-b", {"rouge1": 0.4},
                                                                                 V2, PHASH2)
    text = lb.to_markdown(frame(one + v2), sort_by="rouge1")
    for protocol in (V3, V2):
        table = md_table(text, protocol)
        assert lb.TIE_MARK not in table["header"] and not table["after"]
    assert "_mark" not in html_board(lb.html_page(frame(one + v2), sort_by="rouge1"), V2)["columns"]
    # a metric without evidence (recon_acc is not in the evidence) gets no marks either
    assert lb.TIE_MARK not in md_table(lb.to_markdown(frame(abc_rows(extra={"recon_acc": 0.9})),
                                                      sort_by="recon_acc"))["header"]


def test_marks_refuse_evidence_that_contradicts_the_stored_values():
    # The evidence says A is best, the stored values rank C first: no marks, and the legend says why
    rows = (v3_rows("textldm", "A", {WIKI: EV_A}, stored={"rouge1": 0.1})
            + v3_rows("textldm", "C", {WIKI: EV_C}))
    table = md_table(lb.to_markdown(frame(rows), sort_by="rouge1"))
    assert all(r[lb.TIE_MARK] == "" for r in table["rows"])
    assert "marks not computed for ROUGE-1" in table["after"][0] and "disagree" in table["after"][0]
    # rows whose evidence is not paired (different prompt counts) cannot be tested: a legend, no crash
    short = v3_rows("textldm", "short", {WIKI: evidence(4, rouge=0.45, n=N // 2)})
    table = md_table(lb.to_markdown(frame(abc_rows() + short), sort_by="rouge1"))
    assert all(r[lb.TIE_MARK] == "" for r in table["rows"]) and "marks not computed" in table["after"][0]


# -- 3. entropy flag -----------------------------------------------------------------------------------

def flag_rows(human: bool = True, dataset: str = WIKI) -> list[dict]:
    rows = (plain_rows("textldm", "repetitive", {"mauve": 0.3, "gen_ppl": 12.5, "entropy": 3.9}, dataset=dataset)
            + plain_rows("textldm", "at-0.9x", {"mauve": 0.4, "gen_ppl": 25.5, "entropy": 4.5}, dataset=dataset)
            + plain_rows("textldm", "at-0.8x", {"mauve": 0.35, "gen_ppl": 22.0, "entropy": 4.0}, dataset=dataset))
    if human:
        rows += plain_rows("human", "human-ceiling", {"mauve": 0.9, "gen_ppl": 30.0, "entropy": 5.0}, dataset=dataset)
    return rows


def test_low_entropy_rows_are_flagged_beside_their_gen_ppl_in_markdown():
    text = lb.to_markdown(frame(flag_rows()))
    table = md_table(text)
    rows = by_trial(table["rows"])
    assert rows["repetitive"]["Gen-PPL"] == f"{lb.FLAG_MARK} 12.5"  # 3.9 < 0.8 x 5.0
    assert rows["at-0.9x"]["Gen-PPL"] == "25.5" and rows["at-0.8x"]["Gen-PPL"] == "22"  # strictly below only
    assert rows["human-ceiling"]["Gen-PPL"] == "30"
    assert [line for line in table["after"] if line.startswith(lb.FLAG_MARK)] == [
        "⚠: unigram entropy below 80% of the human row's; low Gen-PPL here signals degenerate repetition, not quality"]
    # the flag follows Gen-PPL when it is the sort metric too
    by_ppl = by_trial(md_table(lb.to_markdown(frame(flag_rows()), sort_by="gen_ppl", descending=False))["rows"])
    assert by_ppl["repetitive"]["**Gen-PPL**"] == f"{lb.FLAG_MARK} 12.5"


def test_low_entropy_rows_are_flagged_in_html():
    board = html_board(lb.html_page(frame(flag_rows())))
    cells = {r["cells"]["trial"][0]: r["cells"]["gen_ppl"] for r in board["rows"]}
    text, attrs = cells["repetitive"]
    assert text == f"{lb.FLAG_MARK} 12.5" and 'class="num flag"' in attrs and "unigram entropy 3.9 &lt; 4" in attrs
    for trial in ("at-0.9x", "at-0.8x", "human-ceiling"):
        assert lb.FLAG_MARK not in cells[trial][0] and "flag" not in cells[trial][1]
    assert any(legend.startswith(lb.FLAG_MARK) for legend in board["legends"])


def test_without_a_human_row_in_the_table_nothing_is_flagged():
    # The docstring: "A table without a human row flags nothing" -- not even with another table's human row
    df = frame(flag_rows(human=False) + flag_rows(dataset=SHAKES))
    text = lb.to_markdown(df)
    table = md_table(text, dataset=WIKI)
    assert not any(lb.FLAG_MARK in cell for r in table["rows"] for cell in r.values())
    assert not any(line.startswith(lb.FLAG_MARK) for line in table["after"])
    assert by_trial(md_table(text, dataset=SHAKES)["rows"])["repetitive"]["Gen-PPL"].startswith(lb.FLAG_MARK)
    board = html_board(lb.html_page(df), dataset=WIKI)
    assert not any(lb.FLAG_MARK in r["cells"]["gen_ppl"][0] for r in board["rows"]) and not board["legends"]


def test_gen_ppl_is_never_shown_without_entropy_right_after_it():
    # no row has an entropy: the column is still there (empty), right after Gen-PPL
    df = frame(plain_rows("textldm", "a", {"mauve": 0.3, "gen_ppl": 20.0, "diversity": 0.5})
               + plain_rows("textldm", "b", {"mauve": 0.2, "gen_ppl": 25.0}))
    for sort_by, label in (("mauve", "Gen-PPL"), ("gen_ppl", "**Gen-PPL**")):
        header = md_table(lb.to_markdown(df, sort_by=sort_by))["header"]
        assert header[header.index(label) + 1] == "entropy"
    columns = html_board(lb.html_page(df))["columns"]
    assert columns[columns.index("gen_ppl") + 1] == "entropy"
    # sorted by entropy, it still sits right after Gen-PPL
    df = frame(flag_rows())
    header = md_table(lb.to_markdown(df, sort_by="entropy"))["header"]
    assert header[header.index("Gen-PPL") + 1] == "**entropy**"
    # no Gen-PPL at all: no entropy column is forced in either
    assert "entropy" not in md_table(lb.to_markdown(frame(plain_rows("textldm", "a", {"mauve": 0.3}))))["header"]


# -- 4. the Gen-PPL–entropy plane ----------------------------------------------------------------------

def plane_figures(page: str) -> list[dict]:
    figures = []
    for chunk in page.split('<figure class="plane-plot"')[1:]:
        chunk = chunk[:chunk.index("</figure>")]
        attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', chunk[:chunk.index(">")]))
        svg = chunk[chunk.index("<svg"):chunk.index("</svg>")]
        points = re.findall(r'<(circle|path|rect) class="point" data-kind="(\w+)"[^>]*><title>([^<]*)</title>', svg)
        legend = re.findall(r'<(?:circle|path|rect) class="legend-marker" data-kind="(\w+)"', svg)
        figures.append({**attrs, "svg": svg, "points": points, "legend": legend})
    return figures


def test_html_has_a_gen_ppl_entropy_plane_per_protocol_with_reference_rows_distinguished():
    rows = (flag_rows() + plain_rows("floor", "floor:unigram", {"mauve": 0.05, "gen_ppl": 400.0, "entropy": 4.8})
            + plain_rows("textldm", "v2-model", {"mauve": 0.3, "gen_ppl": 40.0, "entropy": 4.7}, V2, PHASH2)
            + plain_rows("human", "human-ceiling", {"mauve": 0.9, "gen_ppl": 30.0, "entropy": 5.0}, V2, PHASH2)
            + plain_rows("textldm", "no-entropy", {"mauve": 0.3, "gen_ppl": 20.0}))  # not a point: no x
    page = lb.html_page(frame(rows))
    assert 'id="entropy-plane"' in page and 'href="#entropy-plane"' in page
    figures = {f["data-protocol"]: f for f in plane_figures(page)}
    assert set(figures) == {V3, V2} and all(f["data-dataset"] == WIKI for f in figures.values())
    v3 = figures[V3]
    assert v3["svg"].startswith('<svg class="plane-plot-svg"')
    kinds = sorted((kind, title.rsplit(": entropy", 1)[0]) for _, kind, title in v3["points"])
    assert kinds == [("floor", "floor:unigram"), ("human", "human-ceiling"), ("model", "textldm · at-0.8x"),
                     ("model", "textldm · at-0.9x"), ("model", "textldm · repetitive")]
    # one shape per kind: models circles, the human ceiling a diamond path, floors hollow squares
    assert {kind: shape for shape, kind, _ in v3["points"]} == {"model": "circle", "human": "path", "floor": "rect"}
    # every point is a row's (its title names the row and both values); the legend has one marker per kind
    assert all(": entropy " in title and ", Gen-PPL " in title for _, _, title in v3["points"])
    assert v3["legend"] == ["model", "human", "floor"]
    assert 'class="point-label"' in v3["svg"] and ">human-ceiling</text>" in v3["svg"]
    assert 'class="threshold"' in v3["svg"]  # the flag threshold, 0.8 x the human entropy
    assert sorted(kind for _, kind, _ in figures[V2]["points"]) == ["human", "model"]  # v2 rows: their own plane
    assert "textldm · v2-model" not in v3["svg"]


def test_plane_draws_ci_error_bars_and_survives_degenerate_ranges():
    rows = plain_rows("textldm", "ci", {"gen_ppl": 30.0, "gen_ppl_ci_low": 27.0, "gen_ppl_ci_high": 34.0,
                                        "entropy": 4.0, "entropy_ci_low": 3.9, "entropy_ci_high": 4.1})
    (figure,) = plane_figures(lb.html_page(frame(rows)))
    assert 'data-axis="x"' in figure["svg"] and 'data-axis="y"' in figure["svg"]
    assert 'class="threshold"' not in figure["svg"]  # no human row: no threshold
    # one row exactly on a log tick (Gen-PPL 20): the y axis used to collapse to one tick (division by zero)
    (figure,) = plane_figures(lb.html_page(frame(plain_rows("textldm", "one", {"gen_ppl": 20.0, "entropy": 4.0}))))
    assert len(figure["points"]) == 1
    assert len(re.findall(r'<line class="grid" x1=', figure["svg"])) >= 2
    # no row with both metrics: the section says so instead of drawing an empty plot
    page = lb.html_page(frame(plain_rows("textldm", "a", {"mauve": 0.3, "gen_ppl": 20.0})))
    assert not plane_figures(page) and "No row has both Gen-PPL and unigram entropy" in page


# -- 5. protocol separation ----------------------------------------------------------------------------

def test_v2_and_v3_rows_are_never_ranked_in_one_table():
    v3 = abc_rows()
    v3_sampler = v3_rows("textldm", "other-steps", {WIKI: evidence(5, rouge=0.55)}, phash=PHASH3_SAMPLER)
    v2 = plain_rows("textldm", "v2-top", {"rouge1": 0.9, "mauve_std": 0.01, "mauve": 0.9}, V2, PHASH2)
    df = frame(v3 + v3_sampler + v2)
    tables = md_tables(lb.to_markdown(df, sort_by="rouge1"))
    seen = {(t["title"], t["note"].split(" · ")[0]): [r["trial"] for r in t["rows"]] for t in tables}
    assert seen == {(f"{V3} · {WIKI}", f"protocol hash {PHASH3[:12]}"): ["A", "B", "C"],
                    (f"{V3} · {WIKI}", f"protocol hash {PHASH3_SAMPLER[:12]}"): ["other-steps"],
                    (f"{V2} · {WIKI}", f"protocol hash {PHASH2[:12]}"): ["v2-top"]}
    # the v2 row's higher score does not take the v3 table's first rank or its best mark
    v3_table = [t for t in tables if t["title"].startswith(V3) and PHASH3[:12] in t["note"]][0]
    assert v3_table["rows"][0]["#"] == "1" and v3_table["rows"][0][lb.TIE_MARK] == "**best**"

    boards = html_boards(lb.html_page(df, sort_by="rouge1"))
    ids = {(b["data-protocol"], b["data-protocol-hash"]): {r["row_id"] for r in b["rows"]} for b in boards}
    assert ids == {(V3, PHASH3): {r["row_id"] for r in v3}, (V3, PHASH3_SAMPLER): {v3_sampler[0]["row_id"]},
                   (V2, PHASH2): {v2[0]["row_id"]}}
    # grouping asked for without protocol still splits by it
    assert len(md_tables(lb.to_markdown(df, sort_by="rouge1", group_by=("dataset",)))) == 3


# -- 6. latentlm compare -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def board_file(tmp_path_factory):
    """A leaderboard with: A, B (tied with A), C (worse) on wiki; D2 on wiki and shakespeare; E on shakespeare;
    a v2 row; a v3 row of another scoring hash; one of another sampler (same scoring); one on fewer prompts."""
    rows = abc_rows()
    rows += v3_rows("textldm", "D2", {WIKI: evidence(11, rouge=0.45), SHAKES: evidence(12)})
    rows += v3_rows("textldm", "E", {SHAKES: evidence(13)})
    rows += plain_rows("textldm", "old", {"rouge1": 0.5, "mauve": 0.5}, V2, PHASH2)
    rows += v3_rows("textldm", "other-scoring", {WIKI: evidence(14)}, phash="4444aaaa4444aaaa", scoring="ffff0000ffff")
    rows += v3_rows("textldm", "other-sampler", {WIKI: tied_copy(EV_A, 15, shift=0.0)}, phash=PHASH3_SAMPLER)
    rows += v3_rows("textldm", "short", {WIKI: evidence(16, n=N // 2)})
    path = tmp_path_factory.mktemp("compare") / "leaderboard.parquet"
    lb.Leaderboard(path).add(rows)
    return path, {(r["trial"], r["dataset"]): r["row_id"] for r in rows}


def compare(capsys, board, *argv):
    path, _ = board
    rc = cli.main(["compare", *argv, "--leaderboard", str(path)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def comparison_lines(out: str) -> dict[str, dict]:
    """The metric table of ``latentlm compare`` by metric label (columns are separated by >= 2 spaces)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("metric "))
    header = re.split(r"\s{2,}", lines[start].strip())
    table = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        table[cells[0]] = dict(zip(header, cells))
    return table


def ci(cell: str) -> tuple[float, float]:
    low, high = cell.strip("[]").split(", ")
    return float(low), float(high)


def test_compare_prints_every_shared_metric_with_difference_ci_and_p(capsys, board_file):
    rc, out, err = compare(capsys, board_file, "A", "C")
    assert rc == 0, err
    table = comparison_lines(out)
    shared = set(lb.evidence_metrics(EV_A)) & set(lb.evidence_metrics(EV_C))
    labels = {lb._metric_label(m) + (" (x100)" if m in lb.PERCENT_METRICS else "") for m in shared}
    assert set(table) == labels == {"MAUVE (x100)", "Gen-PPL", "entropy", "ROUGE-1 (x100)", "gen tokens"}
    assert list(table)[:2] == ["MAUVE (x100)", "Gen-PPL"]  # the headline metrics first
    rouge = table["ROUGE-1 (x100)"]
    expected = 100 * (values(EV_A)["rouge1"] - values(EV_C)["rouge1"])
    assert float(rouge["A − B"]) == pytest.approx(expected, abs=0.006) and expected > 5  # A - B, x100
    assert float(rouge["A"]) == pytest.approx(100 * values(EV_A)["rouge1"], abs=0.006)
    low, high = ci(rouge["95% CI"])
    assert 0 < low < float(rouge["A − B"]) < high
    assert rouge["p"] in ("< 0.001", "0.002") and rouge["verdict"] == "A better"
    assert table["gen tokens"]["p"] == "1.000"  # identical lengths: no difference at all
    assert "95% CI: paired bootstrap over prompts" in out and "1000 replicates, seed 0" in out
    assert f"{N} prompts, paired by index" in out

    # swapped: the sign flips and B is the better row
    rc, out, _ = compare(capsys, board_file, "C", "A")
    rouge = comparison_lines(out)["ROUGE-1 (x100)"]
    assert rc == 0 and float(rouge["A − B"]) < 0 and ci(rouge["95% CI"])[1] < 0 and rouge["verdict"] == "B better"


def test_leaderboard_command_ranks_each_metric_in_its_better_direction(capsys, tmp_path):
    # `--sort gen_ppl` alone ranks the lowest Gen-PPL first and marks it best; --descending overrides
    low_ppl, high_ppl = evidence(21, nll=3.0), evidence(22, nll=3.4)
    board = tmp_path / "ppl.parquet"
    lb.Leaderboard(board).add(v3_rows("textldm", "low", {WIKI: low_ppl}) + v3_rows("textldm", "high", {WIKI: high_ppl}))
    assert cli.main(["leaderboard", str(board), "--sort", "gen_ppl"]) == 0
    out = capsys.readouterr().out
    assert "ascending" in out and out.index("| low") < out.index("| high")
    assert cli.main(["leaderboard", str(board), "--sort", "gen_ppl", "--descending"]) == 0
    out = capsys.readouterr().out
    assert out.index("| high") < out.index("| low")


def test_compare_verdict_follows_the_metric_direction(capsys, tmp_path):
    # Gen-PPL: lower is better, so a negative A - B is "A better"
    low_ppl, high_ppl = evidence(21, nll=3.0), evidence(22, nll=3.4)
    board = tmp_path / "ppl.parquet"
    lb.Leaderboard(board).add(v3_rows("textldm", "low", {WIKI: low_ppl}) + v3_rows("textldm", "high", {WIKI: high_ppl}))
    assert cli.main(["compare", "low", "high", "--leaderboard", str(board), "--replicates", "300"]) == 0
    ppl = comparison_lines(capsys.readouterr().out)["Gen-PPL"]
    assert float(ppl["A − B"]) < 0 and ppl["verdict"] == "A better"


def test_compare_flags_a_low_entropy_gen_ppl_against_the_human_ceiling(capsys, tmp_path):
    # "loop" repeats itself: entropy 3.5 < 0.8 x the human row's 5.0, so its low Gen-PPL carries the flag
    rows = (v3_rows("textldm", "loop", {WIKI: evidence(31, entropy=3.5, nll=2.0)})
            + v3_rows("textldm", "fine", {WIKI: evidence(32, entropy=4.9)}))
    board = tmp_path / "flag.parquet"
    lb.Leaderboard(board).add(rows)
    assert cli.main(["compare", "loop", "fine", "--leaderboard", str(board), "--replicates", "200"]) == 0
    out = capsys.readouterr().out
    assert "no human-ceiling row on this protocol and dataset" in out  # nothing to flag against yet
    assert lb.FLAG_MARK not in comparison_lines(out)["Gen-PPL"]["A"]
    lb.Leaderboard(board).add(v3_rows("human", "human-ceiling", {WIKI: evidence(33, entropy=5.0, paired=False)}))
    assert cli.main(["compare", "loop", "fine", "--leaderboard", str(board), "--replicates", "200"]) == 0
    out = capsys.readouterr().out
    ppl = comparison_lines(out)["Gen-PPL"]
    assert ppl["A"].startswith(f"{lb.FLAG_MARK} ") and lb.FLAG_MARK not in ppl["B"]
    assert "low Gen-PPL here signals degenerate repetition" in out and "(4)" in out  # 0.8 x 5.0
    assert cli.main(["compare", "fine", "loop", "--leaderboard", str(board), "--replicates", "200"]) == 0
    ppl = comparison_lines(capsys.readouterr().out)["Gen-PPL"]
    assert ppl["B"].startswith(lb.FLAG_MARK) and not ppl["A"].startswith(lb.FLAG_MARK)


def test_compare_of_identical_or_tied_rows_finds_no_difference(capsys, board_file):
    _, ids = board_file
    rc, out, err = compare(capsys, board_file, "A", ids[("A", WIKI)])
    assert rc == 0, err
    assert "note: A and B are the same row" in out
    for metric, line in comparison_lines(out).items():
        assert float(line["p"]) > 0.3 and line["verdict"] == "no significant difference", metric
        low, high = ci(line["95% CI"])
        assert low <= 0 <= high
    rouge = comparison_lines(compare(capsys, board_file, "A", "B")[1])["ROUGE-1 (x100)"]
    assert float(rouge["p"]) > 0.05 and rouge["verdict"] == "no significant difference"


def test_compare_finds_rows_by_id_prefix_and_trial_name(capsys, board_file):
    _, ids = board_file
    a, c = ids[("A", WIKI)], ids[("C", WIKI)]
    outputs = []
    for spec_a, spec_b in ((a, c), (a[:8], c[:6].upper()), ("A", "C"), ("A", c[:10])):
        rc, out, err = compare(capsys, board_file, spec_a, spec_b)
        assert rc == 0, err
        assert f"A = {a[:12]} (textldm · A · {WIKI})" in out and f"B = {c[:12]} (textldm · C · {WIKI})" in out
        outputs.append(out)
    assert len(set(outputs)) == 1  # the same rows, the same (seeded) result
    # a trial with a row per dataset: --dataset picks one, for both names
    rc, out, err = compare(capsys, board_file, "D2", "E", "--dataset", SHAKES)
    assert rc == 0, err
    assert f"A = {ids[('D2', SHAKES)][:12]}" in out and f"B = {ids[('E', SHAKES)][:12]}" in out
    rc, out, err = compare(capsys, board_file, "D2", "A", "--dataset", WIKI)
    assert rc == 0, err
    assert f"A = {ids[('D2', WIKI)][:12]}" in out
    # another sampler, same scoring protocol: paired, with a note
    rc, out, err = compare(capsys, board_file, "A", "other-sampler")
    assert rc == 0, err
    assert "note: the rows differ in sampler settings" in out


@pytest.mark.parametrize("argv, needle", [
    (["A", "nope"], "no row matches 'nope'"),
    (["A", "short-but-unknown-trial"], "no row matches"),
    (["D2", "A"], "'D2' matches 2 rows"),                                    # ambiguous without --dataset
    (["A", "E"], "rows of different datasets cannot be paired"),
    (["A", "other-scoring"], "rows of different scoring protocols cannot be paired"),
    (["A", "old"], "has no per-prompt evidence"),                            # a v2 row
    (["old", "A"], "row A"),
    (["A", "short"], f"evidence for {N} prompts, B"),                        # not paired
    (["A", "C", "--dataset", SHAKES], f"no row matches 'A' on dataset '{SHAKES}'"),
    (["A", "C", "--level", "0"], "--level"),
    (["A", "C", "--level", "1"], "--level"),
    (["A", "C", "--level", "1.5"], "--level"),
    (["A", "C", "--level", "nan"], "--level"),
    (["A", "C", "--replicates", "1"], "--replicates"),
    (["A", "C", "--replicates", "0"], "--replicates"),
    (["A", "C", "--seed", "-1"], "--seed"),
])
def test_compare_user_errors_exit_2_with_one_line(argv, needle, capsys, board_file):
    rc, out, err = compare(capsys, board_file, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("latentlm: compare error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_compare_prefix_needs_six_characters(capsys, board_file):
    _, ids = board_file
    rc, _, err = compare(capsys, board_file, ids[("A", WIKI)][:5], "C")
    assert rc == 2 and "at least 6 characters" in err
    # the ambiguity message says how to resolve it
    rc, _, err = compare(capsys, board_file, "D2", "A")
    assert rc == 2 and "--dataset" in err and WIKI in err and SHAKES in err


def test_compare_missing_leaderboard_files(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nowhere.parquet"
    assert cli.main(["compare", "A", "B", "--leaderboard", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such leaderboard file" in err and err.count("\n") == 1
    monkeypatch.chdir(tmp_path)  # no --leaderboard and no runs/*/leaderboard.parquet here
    assert cli.main(["compare", "A", "B"]) == 2
    err = capsys.readouterr().err
    assert "no leaderboard files at runs/*/leaderboard.parquet" in err and "--leaderboard" in err


def test_compare_rows_api_checks_options_and_formats():
    df = frame(abc_rows())
    a, c = lb.find_row(df, "A"), lb.find_row(df, "C")
    comparison = lb.compare_rows(a, c, level=0.9, replicates=200, seed=3)
    assert comparison.n == N and [d.metric for d in comparison.differences][:2] == ["mauve", "gen_ppl"]
    rouge = {d.metric: d for d in comparison.differences}["rouge1"]
    assert rouge.difference == pytest.approx(values(EV_A)["rouge1"] - values(EV_C)["rouge1"])
    assert rouge.low > 0 and rouge.p_value < 0.05 and rouge.replicates == 200
    text = lb.format_comparison(comparison)
    assert "90% CI" in text and "200 replicates, seed 3" in text and "verdict at p < 0.1" in text
    for level, replicates in ((0.0, 100), (1.0, 100), (math.nan, 100), (0.95, 1), (0.95, 2.5)):
        with pytest.raises(lb.LeaderboardError):
            lb.check_compare_options(level, replicates)


def test_power_analysis_reports_a_difference_already_resolved_instead_of_extrapolating_below_the_count(
        capsys, board_file):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "power_analysis", Path(__file__).resolve().parents[1] / "experiments" / "power_analysis.py")
    power = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(power)
    path, _ = board_file

    def needed(target: float) -> dict[str, str]:
        assert power.main([str(path), "--metric", "rouge1", "--target", str(target), "--replicates", "300"]) == 0
        table = capsys.readouterr().out.splitlines()
        return {cells[0]: cells[-1] for cells in ([c.strip() for c in line[2:-2].split(" | ")]
                                                  for line in table[2:]) if cells[1] == WIKI}

    coarse, fine = needed(0.5), needed(0.0001)  # far above / far below what N prompts resolve
    assert coarse["textldm · A"] == f"≤ {N} (resolved now)"
    assert int(fine["textldm · A"]) > N
    assert power.main([str(path), "--target", "0"]) == 2
