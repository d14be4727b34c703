import pytest

from bank import Account


def test_deposit_withdraw():
    a = Account("ana")
    assert a.balance == 0
    assert a.deposit(50) == 50
    assert a.withdraw(20) == 30


def test_rules():
    a = Account("bo")
    a.deposit(10)
    for bad in (0, -5):
        with pytest.raises(ValueError):
            a.deposit(bad)
    with pytest.raises(ValueError):
        a.withdraw(11)
    assert a.balance == 10
    with pytest.raises(AttributeError):
        a.balance = 100
