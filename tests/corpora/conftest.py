"""Fixtures of the corpora tests: the installed WordNet (skip without one) and corpora built once."""

from __future__ import annotations

import pytest

from atlas_build.corpora import build_wordnet_corpora
from atlas_build.corpora.wordnet import WordNetNotFoundError, find_wordnet_dir, load_wordnet

SMALL_LEMMAS = 50


@pytest.fixture(scope="session")
def wordnet_dir():
    try:
        return find_wordnet_dir()
    except WordNetNotFoundError as err:
        pytest.skip(f"WordNet 3.0 is not installed (run `make wordnet`): {err}")


@pytest.fixture(scope="session")
def wn(wordnet_dir):
    return load_wordnet(wordnet_dir)


@pytest.fixture(scope="session")
def small(wordnet_dir):
    """The three corpora over SMALL_LEMMAS lemmas."""
    return build_wordnet_corpora(wordnet_dir, max_lemmas=SMALL_LEMMAS, seed=0)
