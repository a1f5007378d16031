import pytest

from kerasbert.data.packing import pack, pair_lengths, truncate


def test_truncate_sides():
    ids = list(range(10))
    assert truncate(ids, 4, "head") == [0, 1, 2, 3]
    assert truncate(ids, 4, "tail") == [6, 7, 8, 9]
    assert truncate(ids, 8, "head+tail") == [0, 1, 4, 5, 6, 7, 8, 9]
    assert truncate(ids, 10, "tail") == ids  # short enough: untouched
    with pytest.raises(ValueError, match="truncation"):
        truncate(ids, 4, "middle")


def test_pair_lengths_longest_first():
    assert pair_lengths(3, 4, 10) == (3, 4)  # fits
    assert pair_lengths(3, 20, 10) == (3, 7)  # short A kept whole
    assert pair_lengths(20, 3, 10) == (7, 3)
    assert pair_lengths(20, 20, 11) == (6, 5)
    for a in range(12):
        for b in range(12):
            ka, kb = pair_lengths(a, b, 9)
            assert ka <= a and kb <= b and ka + kb == min(a + b, 9)


def test_pack_layout():
    ids, seg = pack([5, 6, 7], max_length=4, cls_id=1, sep_id=2)
    assert ids == [1, 5, 6, 2] and seg == [0, 0, 0, 0]
    ids, seg = pack(
        [5, 6, 7], [8, 9], max_length=7, truncation="tail", cls_id=1, sep_id=2
    )
    assert ids == [1, 6, 7, 2, 8, 9, 2]
    assert seg == [0, 0, 0, 0, 1, 1, 1]
