import pytest

from stack import Stack


def test_lifo():
    s = Stack()
    s.push(1)
    s.push(2)
    assert s.peek() == 2 and len(s) == 2
    assert s.pop() == 2 and s.pop() == 1
    assert s.is_empty()


def test_empty_errors():
    s = Stack()
    with pytest.raises(IndexError, match="empty stack"):
        s.pop()
    with pytest.raises(IndexError, match="empty stack"):
        s.peek()
