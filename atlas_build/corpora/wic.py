"""WiC (Word-in-Context; Pilehvar and Camacho-Collados, NAACL 2019) in its published format -> `wic-examples`, `wic-pairs`.

Input: the unzipped `WiC_dataset` directory (or any directory holding its files). Each split is a line-aligned pair
of files, found anywhere under the directory, as the dataset's README describes them:

    <split>.data.txt   target_word <TAB> PoS <TAB> index1-index2 <TAB> example_1 <TAB> example_2
    <split>.gold.txt   T or F: whether the target has the same sense in both examples

PoS is `N` or `V`; `index1`/`index2` are the 0-based indices of the target among the white-space separated tokens
of `example_1`/`example_2` (the examples are published tokenized). Every split found is read (train, dev, test)
and its name kept in the `split` column.

Rows: each data line gives two `wic-examples` rows (`wic:<split>:<line>:1` and `:2`), the example text as
published, the target span being the character offsets of the indexed token; and one `wic-pairs` row
(`wic:<split>:<line>`) with `same_sense` from the gold line. WiC gives no sense ids: `label` is null.
"""

from __future__ import annotations

import re
from pathlib import Path

from atlas_build.atlas.schema import WIC_EXAMPLES, WIC_PAIRS
from atlas_build.corpora.custom import (
    CorpusInputError,
    CorpusTables,
    decode,
    file_entry,
    read_bytes,
    table,
    target_word,
)

KIND = "wic"
DATA_SUFFIX = ".data.txt"
GOLD_SUFFIX = ".gold.txt"
FIELDS = ("target_word", "PoS", "index1-index2", "example_1", "example_2")
POS = {"N": "n", "V": "v"}
GOLD = {"T": True, "F": False}
LICENSE = (
    "CC BY-NC 4.0, as the WiC authors publish the dataset (https://pilehvar.github.io/wic/); the examples come "
    "from WordNet, VerbNet and Wiktionary. Check the terms of the copy you routed."
)
NOTES = (
    "wic-examples / wic-pairs: read from WiC's published files (<split>.data.txt and <split>.gold.txt, "
    "line-aligned); each line gives two examples and one pair, splits kept in the `split` column.",
    "The examples are routed as WiC publishes them (tokenized, tokens separated by spaces); the target span is "
    "the token at WiC's 0-based index; same_sense is the gold label (T = same sense). WiC gives no sense ids "
    "(`label` is null), so the routing-only sense probe does not apply to it.",
)
_INDICES = re.compile(r"(\d+)-(\d+)")
_TOKEN = re.compile(r"\S+")


def read(path: str | Path, **_options) -> CorpusTables:
    """Read every split of the WiC directory `path`.

    Returns:
        `wic-examples` (2 rows per data line) and `wic-pairs` (1 row per data line), sorted by id.

    Raises:
        CorpusInputError: no data file, a data file without its gold file, a line that is not 5 tab-separated
            fields, an unknown PoS, an index outside its example, a gold label other than T/F, or files whose
            line counts differ; the message names the file, the line and the field.
    """
    root = Path(path)
    if not root.is_dir():
        raise CorpusInputError(
            f"--wic {root}: not a directory; pass the unzipped WiC_dataset directory (with train/train.data.txt, "
            "dev/dev.data.txt, test/test.data.txt and their .gold.txt files)"
        )
    data_files = sorted(root.rglob(f"*{DATA_SUFFIX}"))
    if not data_files:
        raise CorpusInputError(
            f"--wic {root}: no *{DATA_SUFFIX} file under it; expected WiC's <split>/<split>{DATA_SUFFIX} "
            f"files with their <split>{GOLD_SUFFIX} beside them"
        )
    splits: dict[str, Path] = {}
    examples, pairs, inputs = [], [], []
    counts: dict[str, dict[str, int]] = {}
    for data_path in data_files:
        split = data_path.name[: -len(DATA_SUFFIX)]
        if split in splits:
            raise CorpusInputError(
                f"--wic {root}: two files of split {split!r} ({splits[split]} and {data_path}); keep one"
            )
        splits[split] = data_path
        gold_path = data_path.with_name(f"{split}{GOLD_SUFFIX}")
        if not gold_path.is_file():
            raise CorpusInputError(
                f"{data_path} has no {gold_path.name} beside it: WiC's gold labels are needed for same_sense; "
                "add the file, or build from a directory without that split"
            )
        data_raw, gold_raw = read_bytes(data_path, "WiC data file"), read_bytes(gold_path, "WiC gold file")
        inputs += [file_entry(data_path, data_raw), file_entry(gold_path, gold_raw)]
        data_lines = _lines(decode(data_raw, data_path))
        gold_lines = _lines(decode(gold_raw, gold_path))
        if len(data_lines) != len(gold_lines):
            raise CorpusInputError(
                f"{gold_path} has {len(gold_lines)} labels and {data_path.name} {len(data_lines)} lines: WiC's "
                "files are line-aligned, one gold label per data line"
            )
        same = 0
        for number, (line, gold) in enumerate(zip(data_lines, gold_lines, strict=True), start=1):
            label = gold.strip()
            if label not in GOLD:
                raise CorpusInputError(
                    f"{gold_path}, line {number}: the gold label must be T or F, got {gold!r}"
                )
            pair, pair_examples = _instance(line, split, number, f"{data_path}, line {number}")
            pair["same_sense"] = GOLD[label]
            same += GOLD[label]
            pairs.append(pair)
            examples.extend(pair_examples)
        counts[split] = {"pairs": len(data_lines), "same": same, "different": len(data_lines) - same}
    if not pairs:
        raise CorpusInputError(f"--wic {root}: the {DATA_SUFFIX} files hold no lines")
    return CorpusTables(
        kind=KIND,
        tables={
            WIC_EXAMPLES: table(WIC_EXAMPLES, sorted(examples, key=lambda r: r["example_id"])),
            WIC_PAIRS: table(WIC_PAIRS, sorted(pairs, key=lambda r: r["pair_id"])),
        },
        inputs=tuple(inputs),
        source=f"WiC, {len(splits)} split(s) ({', '.join(sorted(splits))}) read from {root.name}/",
        license=LICENSE,
        notes=NOTES,
        counts={"examples": len(examples), "pairs": len(pairs), "splits": counts},
    )


def _lines(text: str) -> list[str]:
    """The file's lines; blank lines at the end are dropped (a final newline is no extra line)."""
    lines = text.split("\n")
    lines = [line.removesuffix("\r") for line in lines]
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _instance(line: str, split: str, number: int, where: str) -> tuple[dict, list[dict]]:
    fields = line.split("\t")
    if len(fields) != len(FIELDS):
        raise CorpusInputError(
            f"{where}: expected {len(FIELDS)} tab-separated fields ({', '.join(FIELDS)}), got {len(fields)}"
        )
    target, pos, indices, *sentences = fields
    if not target.strip() or target != target.strip():
        raise CorpusInputError(
            f"{where}: field 'target_word' is empty or has white space around it: {target!r}"
        )
    if pos not in POS:
        raise CorpusInputError(f"{where}: field 'PoS' must be N or V, got {pos!r}")
    match = _INDICES.fullmatch(indices)
    if not match:
        raise CorpusInputError(
            f"{where}: field 'index1-index2' must be two token indices like 3-7, got {indices!r}"
        )
    pair_id = f"{KIND}:{split}:{number:05d}"
    rows = []
    for side, (sentence, index) in enumerate(zip(sentences, map(int, match.groups()), strict=True), start=1):
        tokens = list(_TOKEN.finditer(sentence))
        if not tokens:
            raise CorpusInputError(f"{where}: field 'example_{side}' is empty")
        if index >= len(tokens):
            raise CorpusInputError(
                f"{where}: field 'index1-index2': index{side} {index} is past the {len(tokens)} tokens of "
                f"example_{side} (indices are 0-based)"
            )
        token = tokens[index]
        target_word(
            sentence, token.start(), token.end(), target, f"{where}, field 'index1-index2' (example_{side})"
        )
        rows.append(
            {
                "example_id": f"{pair_id}:{side}",
                "lemma": target,
                "pos": POS[pos],
                "label": None,
                "text": sentence,
                "target_start": token.start(),
                "target_end": token.end(),
                "target_form": token.group(),
                "split": split,
                "source": f"{KIND}:{split}{DATA_SUFFIX}",
            }
        )
    pair = {
        "pair_id": pair_id,
        "lemma": target,
        "pos": POS[pos],
        "example_a": rows[0]["example_id"],
        "example_b": rows[1]["example_id"],
        "split": split,
        "source": f"{KIND}:{split}{DATA_SUFFIX}",
    }
    return pair, rows
