"""The names every publishing module shares: release file names, formats and the errors.

May import: `atlas_build.errors` only.
"""

from __future__ import annotations

from atlas_build.errors import AtlasError

CHANGELOG = "CHANGELOG.md"
RELEASE_JSON = "release.json"
RELEASES_INDEX = "releases.json"
SCRIPTS_DIR = "scripts"
RELEASE_FORMAT = "routing-atlas-release"
INDEX_FORMAT = "routing-atlas-releases"
STAGING_PREFIX = ".staging-"
REPO_TYPE = "dataset"


class PublishError(AtlasError):
    """The release cannot be published as asked (nothing was written)."""


class VersionError(PublishError):
    """The version is not semver, or it already exists at the destination."""


class ValidationFailed(PublishError):
    """The atlas fails validation: a release is only ever made of a validated atlas."""
