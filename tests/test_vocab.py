import pytest
import torch

from latentlm.models.vocab import UNKNOWN, CompactVocab


def test_from_counts_keeps_most_used_ids_and_always_keep():
    counts = torch.tensor([0, 5, 1, 9, 0, 3])
    vocab = CompactVocab.from_counts(counts, limit=2, always_keep=[0])
    assert vocab.to_full[:-1].tolist() == [0, 1, 3]          # top-2 by count (3, 1) plus EOS id 0, sorted
    assert vocab.size == 4 and vocab.unknown_id == 3


def test_round_trip_and_unknown():
    vocab = CompactVocab(torch.tensor([7, 2, 5]), full_size=10)
    ids = torch.tensor([[2, 5, 7, 9, 0]])
    compact = vocab.encode(ids)
    assert compact.tolist() == [[0, 1, 2, 3, 3]]
    assert vocab.decode(compact).tolist() == [[2, 5, 7, UNKNOWN, UNKNOWN]]


def test_tensors_round_trip():
    vocab = CompactVocab(torch.tensor([1, 4]), full_size=6)
    again = CompactVocab.from_tensors(vocab.tensors())
    assert torch.equal(again.to_compact, vocab.to_compact) and torch.equal(again.to_full, vocab.to_full)


def test_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="full_size"):
        CompactVocab(torch.tensor([3, 12]), full_size=10)
