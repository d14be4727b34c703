from add import add


def test_ints():
    assert add(2, 3) == 5


def test_negative_and_float():
    assert add(-1, 1) == 0
    assert abs(add(0.1, 0.2) - 0.3) < 1e-9
