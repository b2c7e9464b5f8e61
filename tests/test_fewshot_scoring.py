"""The few-shot protocol's pure parts: the MCQ scorer and the other scorers, the eight paper tasks' prompts on
hand-made documents shaped like their Hugging Face datasets, the task YAMLs, and the task-file checks."""
from __future__ import annotations

import json

import pytest

from latentlm.platform.evaluation.fewshot import paper, scoring
from latentlm.platform.evaluation.fewshot.items import FewshotDataError
from latentlm.platform.evaluation.fewshot.runner import PAPER_TASKS_DIR
from latentlm.platform.evaluation.fewshot.taskfiles import check_rows, check_task_file

CITIES = ["London", "Paris", "Rome", "Berlin"]


# ------------------------------------------------------------------------------------------------ MCQ scorer
@pytest.mark.parametrize("generation", ["Paris", " paris.", "The Paris", "Paris\nLondon", "  PARIS!  "])
def test_exact_option_text(generation):
    match = scoring.match_option(generation, CITIES)
    assert (match.index, match.rule) == (1, "exact")


def test_paraphrase_maps_to_the_closest_option():
    options = ["to buy groceries for dinner", "to take a long nap", "to fix the broken car", "to call her mother"]
    match = scoring.match_option("She wanted to buy some groceries", options)
    assert (match.index, match.rule) == (0, "f1") and 0 < match.f1 < 1


@pytest.mark.parametrize("generation", ["B", "(B)", "B)", "B.", "[b]", "option B", "Answer: (b)", " (B)\n(C)"])
def test_label_only_answer(generation):
    assert scoring.match_option(generation, CITIES) == scoring.OptionMatch(1, "label")


def test_label_outside_the_options_is_no_answer():
    assert scoring.best_option("E", CITIES) is None
    assert scoring.best_option("(C)", ["yes", "no"]) is None


def test_label_with_text_the_text_decides():
    assert scoring.best_option("(C) Rome", CITIES) == 2
    assert scoring.best_option("(C) Berlin", CITIES) == 3        # the text wins over a contradicting label
    assert scoring.best_option("C) zebra crossing", CITIES) == 2  # text matches nothing: the label
    assert scoring.best_option("A dog in Rome", CITIES) == 2      # a bare "A " is the article, not a label


def test_exact_option_text_wins_over_a_label():
    assert scoring.best_option("B", ["B", "C", "D", "E"]) == 0


@pytest.mark.parametrize("generation", ["", "   ", "\nParis", "the", "..."])
def test_empty_generation_is_no_answer(generation):
    assert scoring.best_option(generation, CITIES) is None
    assert not scoring.mcq_correct(generation, CITIES, 1)


def test_two_options_words_is_a_tie_and_no_credit():
    options = ["red apple", "green pear", "blue plum"]
    match = scoring.match_option("red apple or green pear", options)
    assert (match.index, match.rule) == (None, "tie")
    assert scoring.match_option("a red apple and a pear", options).index == 0   # unequal overlap: the larger wins


def test_no_overlap_is_no_answer():
    assert scoring.match_option("zebra", CITIES) == scoring.OptionMatch(None, "no_overlap")


def test_normalize_is_squad_like():
    assert scoring.normalize("  The Eiffel-Tower, an icon!  ") == "eiffeltower icon"


# ------------------------------------------------------------------------------------------ other scorers
@pytest.mark.parametrize("generation, target, correct", [
    (" river.", "river", True), ("River flows on", "river", True), ('" river', "river", True),
    (" rivers", "river", False), ("", "river", False), ("\nriver", "river", False), (" the river", "river", False),
])
def test_first_word(generation, target, correct):
    assert scoring.first_word_correct(generation, target) is correct


def test_exact_match():
    assert scoring.exact_match(" The Eiffel Tower.\nIt is tall", ["Eiffel Tower", "the tower"])
    assert not scoring.exact_match(" Eiffel", ["Eiffel Tower"])
    assert not scoring.exact_match("", ["the"])   # normalises to "" but an empty answer never matches


# ------------------------------------------------------------------------------------- paper tasks' prompts
MMLU_DOC = {"question": "Which organ pumps blood through the human body?", "subject": "anatomy",
            "choices": ["Liver", "Heart", "Lung", "Kidney"], "answer": 1}
RACE_RAW = {"example_id": "high1.txt",
            "article": "The school garden opened in May. Pupils grow tomatoes and sell them on Fridays.",
            "problems": str([{"answer": "C", "options": ["In March", "In April", "In May", "In June"],
                              "question": "When did the garden open?"},
                             {"answer": "A", "options": ["Tomatoes", "Apples", "Roses", "Beans"],
                              "question": "What do the pupils sell?"}])}
DOCS = {
    "cola_mmlu": MMLU_DOC,
    "cola_storycloze": {"story_id": "s1", "input_sentence_1": "Ana lost her keys.",
                        "input_sentence_2": "She searched the flat.",
                        "input_sentence_3": "She checked every coat pocket.",
                        "input_sentence_4": "Her brother laughed.",
                        "sentence_quiz1": "The keys were in his hand all along.",
                        "sentence_quiz2": "Ana bought a piano.", "answer_right_ending": 1},
    "cola_lambada": {"text": "He opened the old wooden door and stepped into the dark cellar"},
    "cola_openbookqa": {"id": "o1", "question_stem": "Ice melts fastest when it is placed",
                        "choices": {"text": ["in a freezer", "in the sun", "in the shade", "in snow"],
                                    "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    "cola_hellaswag": {"ind": 4, "activity_label": "Baking cookies", "ctx_a": "A girl mixes flour and sugar in a bowl.",
                       "ctx_b": "she", "ctx": "A girl mixes flour and sugar in a bowl. she",
                       "endings": ["[header] pours the dough onto a tray.", "flies away.", "sleeps.", "sings."],
                       "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"},
    "cola_siqa": {"context": "Kai finished the marathon in the rain.", "question": "How would Kai feel?",
                  "answerA": "exhausted but proud", "answerB": "bored", "answerC": "hungry for soup", "label": "1"},
    "cola_squad": {"id": "q1", "title": "Bridge", "context": "The bridge opened in 1932 after six years of work.",
                   "question": "When did the bridge open?", "answers": {"text": ["1932", "in 1932"],
                                                                         "answer_start": [19, 16]}},
}


def test_mmlu_prompt_shows_options_and_ends_at_the_anchor():
    item = paper.mmlu(MMLU_DOC)
    assert item.prompt == ("Question: Which organ pumps blood through the human body?\n"
                           "(A) Liver (B) Heart (C) Lung (D) Kidney\nAnswer:")
    assert item.target == "Heart" and item.correct(" Heart\n") and not item.correct(" Liver")


@pytest.mark.parametrize("task, first_line, anchor, target", [
    ("cola_storycloze", "Story: Ana lost her keys. She searched the flat. She checked every coat pocket. Her brother "
                        "laughed.", "End:", "The keys were in his hand all along."),
    ("cola_openbookqa", "Question: Ice melts fastest when it is placed", "Answer:", "in the sun"),
    ("cola_hellaswag", "Context: Baking cookies: A girl mixes flour and sugar in a bowl. she", "Answer:",
     "pours the dough onto a tray."),
    ("cola_siqa", "Context: Kai finished the marathon in the rain.", "Answer:", "exhausted but proud"),
    ("cola_squad", "Context: The bridge opened in 1932 after six years of work.", "Answer:", "1932"),
])
def test_paper_prompts(task, first_line, anchor, target):
    item = paper.PAPER_TASKS[task].parse(DOCS[task])
    lines = item.prompt.split("\n")
    assert lines[0] == first_line and lines[-1] == anchor and not item.prompt.endswith((" ", "\n"))
    assert item.target == target and item.correct(f" {target}\nmore")


def test_option_counts_follow_table_7():
    counts = {t: len(paper.PAPER_TASKS[t].parse(d).options) for t, d in DOCS.items()
              if t not in ("cola_lambada", "cola_squad")}
    assert counts == {"cola_mmlu": 4, "cola_storycloze": 2, "cola_openbookqa": 4, "cola_hellaswag": 4, "cola_siqa": 3}


def test_lambada_is_a_direct_continuation_scored_by_the_first_word():
    item = paper.lambada(DOCS["cola_lambada"])
    assert item.prompt == "He opened the old wooden door and stepped into the dark" and item.target == "cellar"
    assert item.correct(" cellar. It was cold") and not item.correct(" basement cellar")


def test_race_has_one_item_per_question():
    import datasets
    docs = list(paper.race_questions(datasets.Dataset.from_list([RACE_RAW])))
    assert [d["question"] for d in docs] == ["When did the garden open?", "What do the pupils sell?"]
    item = paper.race(docs[0])
    assert item.prompt.startswith("Article: The school garden opened in May.") and item.target == "In May"
    assert item.prompt.split("\n")[1:] == ["Question: When did the garden open?",
                                           "(A) In March (B) In April (C) In May (D) In June", "Answer:"]


def test_squad_accepts_any_gold_answer():
    item = paper.squad(DOCS["cola_squad"])
    assert item.correct("in 1932.") and item.correct("1932") and not item.correct("1933")


@pytest.mark.parametrize("task, doc, field", [
    ("cola_mmlu", {k: v for k, v in MMLU_DOC.items() if k != "choices"}, "'choices'"),
    ("cola_siqa", {**DOCS["cola_siqa"], "label": "7"}, "'label'"),
    ("cola_openbookqa", {**DOCS["cola_openbookqa"], "answerKey": "E"}, "'answerKey'"),
    ("cola_squad", {**DOCS["cola_squad"], "answers": {"text": [], "answer_start": []}}, "'answers'"),
    ("cola_mmlu", {**MMLU_DOC, "answer": 4}, "answer"),
    ("cola_hellaswag", {**DOCS["cola_hellaswag"], "endings": ["only one"]}, "options"),
])
def test_bad_document_is_a_one_line_error_naming_the_field(task, doc, field):
    with pytest.raises(FewshotDataError) as err:
        paper.PAPER_TASKS[task].item(doc)
    assert task in str(err.value) and field in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------- task YAMLs and demos
TABLE_7 = {"cola_mmlu": (2, 4, "Answer:"), "cola_race": (2, 4, "Answer:"), "cola_storycloze": (2, 2, "End:"),
           "cola_lambada": (0, None, ""), "cola_openbookqa": (2, 4, "Answer:"), "cola_hellaswag": (2, 4, "Answer:"),
           "cola_siqa": (2, 3, "Answer:"), "cola_squad": (1, None, "Answer:")}


@pytest.mark.parametrize("task", sorted(TABLE_7))
def test_task_yaml_follows_the_protocol(task):
    from lm_eval.tasks._yaml_loader import load_yaml
    config = load_yaml(PAPER_TASKS_DIR / f"{task}.yaml")   # resolves every !function
    shots, options, anchor = TABLE_7[task]
    assert config["task"] == task and config["tag"] == ["cola_fewshot"] and config["output_type"] == "generate_until"
    assert config["generation_kwargs"] == {"until": ["\n"], "max_gen_toks": 32}
    assert config["num_fewshot"] == shots
    assert (config["metadata"]["options"], config["metadata"]["anchor"]) == (options, anchor)
    demos = config["fewshot_config"]["samples"]() if shots else []
    assert len(demos) == shots
    for demo in demos:   # hand-written, in the dataset's shape: the task's own functions render and score them
        text, target = config["doc_to_text"](demo), config["doc_to_target"](demo)
        assert text.endswith(anchor) and config["process_results"](demo, [f" {target}"]) in (
            {"accuracy": 1.0}, {"exact_match": 1.0})
    if options:
        assert len({paper.PAPER_TASKS[task].parse(d).answer for d in demos}) == len(demos)  # gold positions vary


def test_squad_demo_answer_span_is_in_its_context():
    demo = paper.demos.SQUAD[0]
    start, text = demo["answers"]["answer_start"][0], demo["answers"]["text"][0]
    assert demo["context"][start:start + len(text)] == text


# ------------------------------------------------------------------------------------------ task-file checks
def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_local_row_without_options_names_file_line_and_field(tmp_path):
    path = _write_jsonl(tmp_path / "mine.jsonl", [{"context": "c", "options": ["x", "y"], "answer": 1},
                                                   {"context": "c", "answer": 0}])
    with pytest.raises(FewshotDataError, match=r"mine\.jsonl:2: missing field 'options'") as err:
        check_rows(path, "mcq")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("row, message", [
    ({"context": "c", "options": ["x", "y"]}, "missing field 'answer'"),
    ({"context": "c", "options": ["x", "y"], "answer": 2}, "'answer' must index the 2 options"),
    ({"context": "c", "options": ["x"], "answer": 0}, "'options' must hold >= 2"),
    ({"context": "c", "options": ["x", "y"], "answer": "1"}, "'answer' must be int"),
])
def test_bad_mcq_rows(tmp_path, row, message):
    with pytest.raises(FewshotDataError, match=message):
        check_rows(_write_jsonl(tmp_path / "t.jsonl", [row]), "mcq")


def test_bad_json_and_missing_file(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"context": "c", "answer": "w"}\n{oops\n')
    with pytest.raises(FewshotDataError, match=r"t\.jsonl:2: not valid JSON"):
        check_rows(tmp_path / "t.jsonl", "lastword")
    with pytest.raises(FewshotDataError, match="no such task data file"):
        check_rows(tmp_path / "absent.jsonl", "lastword")


def test_task_yaml_without_a_required_key(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("task: mine\noutput_type: generate_until\n")
    with pytest.raises(FewshotDataError, match=r"mine\.yaml: missing field 'doc_to_text'"):
        check_task_file(path)


def test_plain_json_task_with_declared_format_is_checked(tmp_path):
    data = _write_jsonl(tmp_path / "d.jsonl", [{"context": "c", "options": ["x", "y"]}])
    path = tmp_path / "mine.yaml"
    path.write_text(f"task: mine\noutput_type: generate_until\ndoc_to_text: context\ndataset_path: json\n"
                    f"dataset_kwargs:\n  data_files:\n    test: {data}\nmetadata:\n  local_format: mcq\n")
    with pytest.raises(FewshotDataError, match=r"d\.jsonl:1: missing field 'answer'"):
        check_task_file(path)
