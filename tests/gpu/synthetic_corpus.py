#!/usr/bin/env python3
"""Writes a corpus of random words for GPU runs (the device machine has no text corpus package).

usage: synthetic_corpus.py OUT SEED VOCABULARY_WORDS DOCUMENTS MIN_WORDS MAX_WORDS
Documents are separated by blank lines, so `metamorph data prepare` splits them.
"""
import random
import sys


def main():
    out, seed, vocabulary, documents, fewest, most = sys.argv[1], *map(int, sys.argv[2:7])
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(vocabulary)]
    with open(out, "w") as f:
        for _ in range(documents):
            f.write(" ".join(rng.choice(words) for _ in range(rng.randint(fewest, most))) + "\n\n")


if __name__ == "__main__":
    main()
