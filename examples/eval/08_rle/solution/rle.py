import itertools
import re


def encode(text):
    out = []
    for char, group in itertools.groupby(text):
        n = len(list(group))
        out.append(f'{n}{char}' if n > 1 else char)
    return ''.join(out)


def decode(text):
    return ''.join(char * int(n or 1) for n, char in re.findall(r'(\d*)(\D)', text))
