"""Finding and opening WordNet: Debian's layout, nltk's layouts, the missing lexnames, the errors."""

from __future__ import annotations

import gzip
import re
import zipfile
from pathlib import Path

import nltk
import pytest

from atlas_build.corpora import wordnet as wnmod
from atlas_build.corpora.wordnet import (
    LEXNAMES,
    REQUIRED_FILES,
    WordNetNotFoundError,
    describe_source,
    find_wordnet_dir,
    wordnet_version,
)

DEBIAN = Path("/usr/share/wordnet")
LEXNAMES_MAN = Path("/usr/share/man/man5/lexnames.5WN.gz")

needs_debian = pytest.mark.skipif(
    not (DEBIAN / "data.noun").is_file(),
    reason="Debian's wordnet-base is not installed in /usr/share/wordnet",
)


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """No nltk data, no WordNet variables: only what a test puts in place is found."""
    empty = tmp_path / "empty_nltk_data"
    empty.mkdir()
    monkeypatch.setattr(nltk.data, "path", [str(empty)])
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    monkeypatch.delenv("WNHOME", raising=False)
    monkeypatch.delenv("NLTK_DATA", raising=False)
    return tmp_path


@needs_debian
def test_debian_dir_is_autodetected(isolated):
    assert find_wordnet_dir() == DEBIAN.resolve()


@needs_debian
def test_debian_ships_no_lexnames_and_the_reader_serves_them(isolated):
    if (DEBIAN / "lexnames").exists():
        pytest.skip("this WordNet install has a lexnames file")
    # Uncached load, with no nltk data at all: the reader must not look up a corpus named "wordnet".
    reader = wnmod._load.__wrapped__(DEBIAN.resolve())
    assert reader._lexnames == [name for name, _ in LEXNAMES]
    assert reader.synset("bank.n.01").lexname() == "noun.object"
    assert reader.synset("run.v.01").lexname() == "verb.motion"
    assert reader.map30 is None
    assert wordnet_version(reader) == "3.0"


def test_lexnames_constant_matches_the_man_page():
    assert len(LEXNAMES) == 45
    assert (
        LEXNAMES[0] == ("adj.all", 3) and LEXNAMES[3] == ("noun.Tops", 1) and LEXNAMES[44] == ("adj.ppl", 3)
    )
    if not LEXNAMES_MAN.is_file():
        pytest.skip("lexnames(5WN) man page not installed")
    text = gzip.decompress(LEXNAMES_MAN.read_bytes()).decode("utf-8", "replace")
    listed = re.findall(r"^(\d\d)\t(\S+)", text, flags=re.M)
    assert [name for _, name in listed] == [name for name, _ in LEXNAMES]
    assert [int(n) for n, _ in listed] == list(range(45))


def test_lexnames_text_is_what_the_reader_parses():
    lines = wnmod.lexnames_text().splitlines()
    assert lines[0] == "00\tadj.all\t3" and lines[44] == "44\tadj.ppl\t3"


@pytest.mark.parametrize("missing", ["does-not-exist", "empty"])
def test_explicit_missing_dir_names_the_install_commands(tmp_path, missing):
    target = tmp_path / missing
    if missing == "empty":
        target.mkdir()
    with pytest.raises(WordNetNotFoundError) as err:
        find_wordnet_dir(target)
    message = str(err.value)
    assert "apt-get install wordnet-base wordnet-sense-index" in message
    assert "nltk.download('wordnet')" in message
    assert "--wordnet-dir" in message
    if missing == "empty":
        assert "data.noun" in message


def test_nothing_found_names_the_install_commands(isolated, monkeypatch):
    monkeypatch.setattr(wnmod, "DEBIAN_DIRS", (isolated / "no-wordnet",))
    with pytest.raises(WordNetNotFoundError, match="apt-get install wordnet-base wordnet-sense-index"):
        find_wordnet_dir()


@needs_debian
def test_dict_and_nltk_data_layouts(isolated, monkeypatch):
    # Princeton's WordNet-3.0/dict, given explicitly.
    (isolated / "WordNet-3.0").mkdir()
    (isolated / "WordNet-3.0" / "dict").symlink_to(DEBIAN)
    assert find_wordnet_dir(isolated / "WordNet-3.0") == DEBIAN.resolve()
    # An nltk_data folder with corpora/wordnet, found through nltk.data.path.
    (isolated / "nltk_data" / "corpora").mkdir(parents=True)
    (isolated / "nltk_data" / "corpora" / "wordnet").symlink_to(DEBIAN)
    monkeypatch.setattr(nltk.data, "path", [str(isolated / "nltk_data")])
    monkeypatch.setattr(wnmod, "DEBIAN_DIRS", ())
    assert find_wordnet_dir() == DEBIAN.resolve()
    # The WordNet tools' own variable.
    monkeypatch.setattr(nltk.data, "path", [])
    monkeypatch.setenv("WNSEARCHDIR", str(DEBIAN))
    assert find_wordnet_dir() == DEBIAN.resolve()


@needs_debian
def test_nltk_zip_layout_is_found_and_read(isolated, monkeypatch):
    # nltk.download('wordnet') leaves corpora/wordnet.zip; this one has no lexnames either.
    corpora = isolated / "nltk_data" / "corpora"
    corpora.mkdir(parents=True)
    with zipfile.ZipFile(corpora / "wordnet.zip", "w", compression=zipfile.ZIP_STORED) as zf:
        for name in REQUIRED_FILES:
            zf.write(DEBIAN / name, f"wordnet/{name}")
    monkeypatch.setattr(nltk.data, "path", [str(isolated / "nltk_data")])
    location = find_wordnet_dir()
    assert location == (corpora / "wordnet.zip").resolve()
    reader = wnmod._load.__wrapped__(location)
    assert reader.synset("bank.n.01").lexname() == "noun.object"
    assert reader._morphy("geese", "n") == ["goose"]


def test_loaded_reader(wn, wordnet_dir):
    assert wordnet_version(wn) == "3.0"
    assert wn.synset("bank.n.01").lemmas()[0].key() == "bank%1:17:01::"
    source = describe_source(wordnet_dir)
    assert "WordNet 3.0" in source and str(wordnet_dir) in source and nltk.__version__ in source
