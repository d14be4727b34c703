from palindrome import is_palindrome


def test_sentence():
    assert is_palindrome("A man, a plan, a canal: Panama!")


def test_not():
    assert not is_palindrome("crew")


def test_empty_and_digits():
    assert is_palindrome("")
    assert is_palindrome("12 21")
    assert not is_palindrome("123")
