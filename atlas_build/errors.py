"""User-facing errors: the CLI prints their message (no traceback) and exits non-zero."""


class AtlasError(Exception):
    """Bad input or a state the user must fix; the message says what and how."""


class LockError(AtlasError):
    """Another build holds the atlas directory."""


class BuildOptionsError(AtlasError):
    """Options conflict with each other or with the atlas already in the directory."""
