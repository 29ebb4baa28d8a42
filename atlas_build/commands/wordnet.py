"""`atlas wordnet-check`: is WordNet 3.0 where the build will look for it?"""

from __future__ import annotations

import click


@click.command("wordnet-check")
@click.option("--wordnet-dir", default=None, help="WordNet dict directory (default: auto-detect).")
def command(wordnet_dir: str | None) -> None:
    """Find WordNet 3.0 (nltk data path, Debian's /usr/share/wordnet, or --wordnet-dir) and describe it."""
    from atlas_build.corpora.wordnet import (
        WordNetNotFoundError,
        describe_source,
        find_wordnet_dir,
        load_wordnet,
    )
    from atlas_build.errors import AtlasError

    try:
        path = find_wordnet_dir(wordnet_dir)
        load_wordnet(path)
    except WordNetNotFoundError as error:
        raise AtlasError(str(error)) from None
    click.echo(describe_source(path))
