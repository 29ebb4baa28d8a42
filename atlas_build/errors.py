"""User-facing errors: the CLI prints `error: <message>` on one line (no traceback) and exits with the
error's code.

Exit codes, one table for every command (the README's "Exit codes" lists the same):

    0    success
    1    the command ran and its checks found problems (validate, verify, audit below its threshold)
    2    bad input: a usage error, an option out of range, a malformed input file (the default)
    3    a damaged atlas: files that do not match manifest.json, a manifest that cannot be read
    4    refused: the command would be unsafe (another build holds the lock, a write into a release, ...)
    70   internal error: a bug in routing-atlas (one line; ATLAS_TRACEBACK=1 shows the traceback)
    130  interrupted (Ctrl-C); nothing is half-written
"""

EXIT_OK = 0
EXIT_CHECKS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DAMAGED_ATLAS = 3
EXIT_REFUSED = 4
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


class AtlasError(Exception):
    """Bad input or a state the user must fix; the message says what and how."""

    exit_code = EXIT_BAD_INPUT


class DamagedAtlasError(AtlasError):
    """The atlas on disk is not what its manifest says (altered, missing or unreadable files)."""

    exit_code = EXIT_DAMAGED_ATLAS


class RefusedError(AtlasError):
    """The command would be unsafe to carry out as asked; nothing was written."""

    exit_code = EXIT_REFUSED


class LockError(RefusedError):
    """Another build holds the atlas directory."""


class BuildOptionsError(AtlasError):
    """Options conflict with each other or with the atlas already in the directory."""
