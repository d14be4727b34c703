import pytest

from roman import to_roman


@pytest.mark.parametrize("n, expected", [(1, "I"), (4, "IV"), (9, "IX"), (14, "XIV"), (40, "XL"),
                                         (1994, "MCMXCIV"), (3999, "MMMCMXCIX")])
def test_numerals(n, expected):
    assert to_roman(n) == expected


@pytest.mark.parametrize("bad", [0, -1, 4000, 2.5])
def test_out_of_range(bad):
    with pytest.raises(ValueError):
        to_roman(bad)
