"""Find and open WordNet 3.0 with nltk, wherever it is installed.

Two installs are supported, both WordNet 3.0 (the same database):

* Debian/Ubuntu: ``apt-get install wordnet-base wordnet-sense-index`` puts the database files
  (``data.noun``, ``index.sense``, ``noun.exc``, ...) directly in ``/usr/share/wordnet``. Debian ships no
  ``lexnames`` file; its content (the 45 lexicographer file names) is in the ``lexnames(5WN)`` man page,
  so it is generated here from :data:`LEXNAMES`.
* nltk: ``nltk.download('wordnet')`` leaves ``corpora/wordnet.zip`` (or an unpacked ``corpora/wordnet/``)
  under one of the ``nltk.data.path`` folders.

nltk (3.9.3 and later) refuses to read files outside its data sandbox (the ``nltk.data.path`` folders), so
:func:`load_wordnet` registers the WordNet folder there: that is nltk's documented way of authorising a
corpus in a custom location. Nothing is copied or linked: the reader opens the files in place.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
import zipfile
from pathlib import Path

import nltk
from nltk.corpus.reader.wordnet import WordNetCorpusReader
from nltk.data import FileSystemPathPointer, ZipFilePathPointer

from atlas_build.errors import AtlasError

INSTALL_HINT = (
    "install WordNet 3.0 with `apt-get install wordnet-base wordnet-sense-index` (Debian/Ubuntu), "
    "or with `python -c \"import nltk; nltk.download('wordnet')\"`, or pass --wordnet-dir DIR "
    "(a folder holding data.noun, index.noun, noun.exc, ...)"
)

# Files the reader needs: the database proper. `lexnames` is generated when missing (Debian);
# `index.sense` and `cntlist.rev` are only read by lookups this project does not make.
REQUIRED_FILES = tuple(
    f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv")
) + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))

REINSTALL_HINT = (
    "reinstall it (`apt-get install --reinstall wordnet-base wordnet-sense-index`, or "
    "`python -c \"import nltk; nltk.download('wordnet')\"`), or pass --wordnet-dir with an intact copy"
)

DEBIAN_DIRS = (Path("/usr/share/wordnet"), Path("/usr/share/wordnet/dict"))

# The lexicographer files of WordNet 3.0, numbered 00..44 (lexnames(5WN)): name and syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb). Synset records store the number; the reader maps it to the name.
LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3),
    ("adj.pert", 3),
    ("adv.all", 4),
    ("noun.Tops", 1),
    ("noun.act", 1),
    ("noun.animal", 1),
    ("noun.artifact", 1),
    ("noun.attribute", 1),
    ("noun.body", 1),
    ("noun.cognition", 1),
    ("noun.communication", 1),
    ("noun.event", 1),
    ("noun.feeling", 1),
    ("noun.food", 1),
    ("noun.group", 1),
    ("noun.location", 1),
    ("noun.motive", 1),
    ("noun.object", 1),
    ("noun.person", 1),
    ("noun.phenomenon", 1),
    ("noun.plant", 1),
    ("noun.possession", 1),
    ("noun.process", 1),
    ("noun.quantity", 1),
    ("noun.relation", 1),
    ("noun.shape", 1),
    ("noun.state", 1),
    ("noun.substance", 1),
    ("noun.time", 1),
    ("verb.body", 2),
    ("verb.change", 2),
    ("verb.cognition", 2),
    ("verb.communication", 2),
    ("verb.competition", 2),
    ("verb.consumption", 2),
    ("verb.contact", 2),
    ("verb.creation", 2),
    ("verb.emotion", 2),
    ("verb.motion", 2),
    ("verb.perception", 2),
    ("verb.possession", 2),
    ("verb.social", 2),
    ("verb.stative", 2),
    ("verb.weather", 2),
    ("adj.ppl", 3),
)


class WordNetNotFoundError(AtlasError):
    """No usable WordNet 3.0 installation was found (the message says what to install)."""


def lexnames_text() -> str:
    """The content of WordNet's ``lexnames`` file: ``NN<TAB>name<TAB>category`` lines, 00..44."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES))


def _missing_files(path: Path) -> list[str]:
    """Required database files that `path` (a folder or an nltk ``wordnet.zip``) lacks."""
    if path.is_file() and path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                names = {Path(n).name for n in zf.namelist() if not n.endswith("/")}
        except (OSError, zipfile.BadZipFile):
            return list(REQUIRED_FILES)
        return [f for f in REQUIRED_FILES if f not in names]
    return [f for f in REQUIRED_FILES if not (path / f).is_file()]


def _candidates(base: Path) -> list[Path]:
    """Where a WordNet database may sit relative to a folder a user or nltk names."""
    return [
        base,
        base / "dict",  # Princeton's WordNet-3.0/dict layout
        base / "corpora" / "wordnet",  # an nltk_data folder, unpacked
        base / "corpora" / "wordnet.zip",  # an nltk_data folder, as nltk.download leaves it
    ]


def find_wordnet_dir(wordnet_dir: str | Path | None = None) -> Path:
    """The folder (or nltk ``wordnet.zip``) holding the WordNet database.

    Args:
        wordnet_dir: an explicit location: the database folder itself, a folder with a ``dict/``
            subfolder, an nltk_data folder, or a ``wordnet.zip``. When None, the location is auto-detected:
            every ``nltk.data.path`` entry (``corpora/wordnet`` or ``corpora/wordnet.zip``), then the
            ``WNSEARCHDIR`` and ``WNHOME`` variables of the WordNet tools, then Debian's ``/usr/share/wordnet``.

    Returns:
        The resolved location, a folder or a ``.zip`` file.

    Raises:
        WordNetNotFoundError: nothing usable was found; the message names the install commands.
    """
    if wordnet_dir is not None:
        base = Path(wordnet_dir).expanduser()
        if not base.exists():
            raise WordNetNotFoundError(f"WordNet folder {str(base)!r} does not exist: {INSTALL_HINT}")
        for candidate in _candidates(base):
            if candidate.exists() and not _missing_files(candidate):
                return candidate.resolve()
        missing = ", ".join(_missing_files(base))
        raise WordNetNotFoundError(
            f"{str(base)!r} is not a WordNet 3.0 database (missing {missing}): {INSTALL_HINT}"
        )

    searched: list[Path] = []
    for entry in nltk.data.path:
        base = Path(str(entry)).expanduser()
        searched += [base / "corpora" / "wordnet", base / "corpora" / "wordnet.zip"]
    if os.environ.get("WNSEARCHDIR"):
        searched.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        searched.append(Path(os.environ["WNHOME"]) / "dict")
    searched += DEBIAN_DIRS
    for candidate in searched:
        if candidate.exists() and not _missing_files(candidate):
            return candidate.resolve()
    raise WordNetNotFoundError(
        f"WordNet 3.0 not found (searched nltk.data.path, $WNSEARCHDIR, $WNHOME and "
        f"{', '.join(str(d) for d in DEBIAN_DIRS)}): {INSTALL_HINT}"
    )


class AtlasWordNetReader(WordNetCorpusReader):
    """nltk's WordNet reader, able to open Debian's WordNet in place.

    Differences from the stock reader, each for an install nltk does not expect:

    * a missing ``lexnames`` file is served from :data:`LEXNAMES` (Debian ships none);
    * no Open Multilingual Wordnet reader is attached (this project reads English only), and the
      reader does not look up a second corpus named ``wordnet`` in ``nltk.data.path`` to map WordNet 3.0
      onto itself, which the stock reader does on construction and which fails when WordNet is not
      installed as nltk data.
    """

    def __init__(self, root: FileSystemPathPointer | ZipFilePathPointer):
        with warnings.catch_warnings():
            # "The multilingual functions are not available with this Wordnet version": intended.
            warnings.filterwarnings("ignore", message="The multilingual functions")
            super().__init__(root, omw_reader=None)

    def open(self, file):
        if file == "lexnames":
            try:
                return super().open(file)
            except OSError:
                return io.StringIO(lexnames_text())
        return super().open(file)

    def map_wn(self, version="wordnet"):
        # The stock reader maps the nltk corpus named `version` onto this one, for OMW lookups; with
        # WordNet 3.0 read from anywhere, that is the identity map, and the lookup would fail outside
        # nltk_data.
        if version == "wordnet" and self.get_version() == "3.0":
            return None
        return super().map_wn(version)


def _authorise(folder: Path) -> None:
    """Register `folder` on nltk's data path: nltk's sandbox refuses to open files outside it."""
    if not any(Path(str(p)).expanduser().resolve() == folder for p in nltk.data.path):
        nltk.data.path.append(str(folder))


def _database_reader(location: Path):
    """`read(name) -> bytes` of the database files at `location` (a folder or an nltk wordnet.zip)."""
    if location.suffix != ".zip":
        return lambda name: (location / name).read_bytes()
    with zipfile.ZipFile(location) as zf:
        members = {Path(n).name: n for n in zf.namelist() if not n.endswith("/")}

    def read(name: str) -> bytes:
        with zipfile.ZipFile(location) as zf:
            return zf.read(members[name])

    return read


def check_database(location: Path) -> None:
    """Refuse a damaged database: every synset offset that an index file names must start a record of the
    data file (a truncated or overwritten `data.noun` fails here, not as a traceback mid-build).

    Reads the eight index and data files once (~40 MB, well under a second); the exception lists are
    checked for their final newline (a cut-off file).

    Raises:
        WordNetNotFoundError: the file that is damaged, and how to reinstall.
    """
    read = _database_reader(location)
    damaged = f"WordNet at {location} is damaged"
    INSTALL_HINT = REINSTALL_HINT  # noqa: N806 - every message below ends with it
    try:
        for pos in ("noun", "verb", "adj", "adv"):
            index, data = read(f"index.{pos}"), read(f"data.{pos}")
            for name, content in ((f"index.{pos}", index), (f"data.{pos}", data)):
                if content and not content.endswith(b"\n"):
                    raise WordNetNotFoundError(f"{damaged}: {name} is cut off mid-line; {INSTALL_HINT}")
            for number, line in enumerate(index.splitlines(), start=1):
                if line.startswith(b"  "):  # the licence header
                    continue
                fields = line.split()
                try:
                    offsets = fields[-int(fields[2]) :]
                    starts = [int(offset) for offset in offsets]
                except (IndexError, ValueError):
                    raise WordNetNotFoundError(
                        f"{damaged}: line {number} of index.{pos} is not an index entry; {INSTALL_HINT}"
                    ) from None
                for offset, start in zip(offsets, starts, strict=True):
                    if data[start : start + len(offset)] != offset or (
                        start and data[start - 1 : start] != b"\n"
                    ):
                        raise WordNetNotFoundError(
                            f"{damaged}: index.{pos} points to synset {offset.decode()} of data.{pos}, which "
                            f"{'ends before it' if start >= len(data) else 'has no record there'}; {INSTALL_HINT}"
                        )
        for pos in ("noun", "verb", "adj", "adv"):
            content = read(f"{pos}.exc")
            if content and not content.endswith(b"\n"):
                raise WordNetNotFoundError(f"{damaged}: {pos}.exc is cut off mid-line; {INSTALL_HINT}")
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise WordNetNotFoundError(f"{damaged}: {error}; {INSTALL_HINT}") from None


@functools.lru_cache(maxsize=8)
def _load(location: Path) -> AtlasWordNetReader:
    check_database(location)
    if location.suffix == ".zip":
        _authorise(location.parent)
        with zipfile.ZipFile(location) as zf:
            data_noun = next(n for n in zf.namelist() if Path(n).name == "data.noun")
        root = ZipFilePathPointer(str(location), data_noun[: -len("data.noun")])
    else:
        _authorise(location)
        root = FileSystemPathPointer(str(location))
    return AtlasWordNetReader(root)


def load_wordnet(wordnet_dir: str | Path | None = None) -> WordNetCorpusReader:
    """An nltk WordNet reader over the WordNet found by :func:`find_wordnet_dir`.

    The reader is cached per location (loading indexes takes a few seconds). Loading registers the
    WordNet folder on ``nltk.data.path``, which nltk requires before it opens files there.

    Raises:
        WordNetNotFoundError: no WordNet at `wordnet_dir`, or none found.
    """
    return _load(find_wordnet_dir(wordnet_dir))


def wordnet_version(reader: WordNetCorpusReader) -> str:
    """The database version from the data files' header, e.g. ``"3.0"``."""
    return str(reader.get_version())


def describe_source(path: str | Path | None = None) -> str:
    """One line for the dataset card: which WordNet was read, from where, with which nltk."""
    location = find_wordnet_dir(path)
    version = wordnet_version(load_wordnet(location))
    if location in DEBIAN_DIRS or str(location).startswith("/usr/share/wordnet"):
        how = "Debian packages wordnet-base and wordnet-sense-index"
    elif location.suffix == ".zip" or location.parent.name == "corpora":
        how = "nltk data package 'wordnet'"
    else:
        how = "a local WordNet folder"
    return f"Princeton WordNet {version} ({how}, {location}), read with nltk {nltk.__version__}"
