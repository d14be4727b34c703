from flatten import flatten


def test_deep():
    assert flatten([1, [2, [3, (4, [5])]], 6]) == [1, 2, 3, 4, 5, 6]


def test_none_and_strings():
    assert flatten([None, "ab", ["c", None, []]]) == ["ab", "c"]


def test_empty():
    assert flatten([]) == []
