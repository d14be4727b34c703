from words import word_count


def test_counts_and_case():
    assert word_count("One fish, two fish. Red fish!") == {"one": 1, "fish": 3, "two": 1, "red": 1}


def test_apostrophes_and_quotes():
    assert word_count("'Don't' stop, don't.") == {"don't": 2, "stop": 1}


def test_empty():
    assert word_count("  ...  ") == {}
