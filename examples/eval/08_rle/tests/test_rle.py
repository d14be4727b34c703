from rle import decode, encode


def test_encode():
    assert encode("WWWWWWWWWWWWBWWWWWWWWWWWWBBB") == "12WB12W3B"
    assert encode("") == ""
    assert encode("ab") == "ab"


def test_decode():
    assert decode("12WB12W3B") == "WWWWWWWWWWWWBWWWWWWWWWWWWBBB"
    assert decode("2 hs2q q2w2 ") == "  hsqq qww  "


def test_round_trip():
    assert decode(encode("zzz ZZ  zZ")) == "zzz ZZ  zZ"
