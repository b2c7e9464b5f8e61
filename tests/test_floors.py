"""The must-lose generators: exact lengths, what each repeats or borrows, determinism."""
import numpy as np

from latentlm.platform.evaluation import floors


def test_prompt_repeat_cycles_the_prompts_last_tokens_to_the_exact_length():
    assert floors.repeat_tail([1, 2, 3, 4, 5], 7, span=3) == [3, 4, 5, 3, 4, 5, 3]
    assert floors.repeat_tail([9], 4) == [9, 9, 9, 9]
    assert len(floors.repeat_tail(list(range(40)), 33)) == 33


def test_frequency_floors_follow_the_training_counts():
    counts = np.array([0, 5, 90, 5])
    assert floors.top_token(counts, 4) == [2, 2, 2, 2]
    drawn = floors.unigram(counts, 5000, np.random.default_rng(0))
    assert len(drawn) == 5000 and 0 not in drawn
    assert abs(drawn.count(2) / 5000 - 0.9) < 0.02


def test_borrow_takes_another_tail_of_at_least_the_length():
    tails = [[1] * 3, [2] * 10, [3] * 2, [4] * 6]
    assert floors.borrow(tails, 0, 5, exclude=0) == [2] * 5          # tail 0 excluded, tail 1 long enough
    assert floors.borrow(tails, 2, 5, exclude=1) == [4] * 5          # scans cyclically from 2, skipping 1
    assert floors.borrow(tails, 3, 4, exclude=3) == [2] * 4          # wraps around
    assert floors.borrow(tails, 0, 20, exclude=1) == [4] * 6         # none long enough: the longest, cut


def test_continuation_floors_have_each_references_length_and_come_from_other_documents():
    prompts = [[1, 2, 3], [4, 5, 6, 7], [8, 9]]
    lengths = [4, 2, 3]
    tails = [[10, 11, 12, 13, 14], [20, 21], [30, 31, 32, 33]]
    counts = np.array([0, 1, 1, 8, 1])
    out = floors.continuation_floors(prompts, lengths, tails, counts, [7, 8])
    assert set(out) == {"floor:prompt-repeat", "floor:other-document", "floor:unigram", "floor:top-token"}
    for name, generations in out.items():
        for ids in generations.values():
            assert [len(x) for x in ids] == lengths, name
    assert set(out["floor:unigram"]) == {7, 8} and set(out["floor:prompt-repeat"]) == {7}
    assert out["floor:other-document"][7] == [[30, 31, 32, 33], [30, 31], [10, 11, 12]]
    assert out["floor:top-token"][7] == [[3] * 4, [3] * 2, [3] * 3]
    again = floors.continuation_floors(prompts, lengths, tails, counts, [7, 8])
    assert again == out                                                # deterministic
    without = floors.continuation_floors(prompts, lengths, tails, None, [7])
    assert set(without) == {"floor:prompt-repeat", "floor:other-document"}


def test_window_floors_are_full_windows():
    out = floors.window_floors(3, 16, np.array([1, 2, 3]), [0, 1])
    assert set(out) == {"floor:unigram", "floor:top-token"}
    assert all(len(x) == 16 for gens in out.values() for ids in gens.values() for x in ids)
    assert floors.window_floors(3, 16, None, [0]) == {}
