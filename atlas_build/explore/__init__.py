"""The atlas explorer: a static site (no server, no CDN) of an atlas's senses, routing and metrics.

It reads the atlas alone (`atlas_build.atlas`: manifest and Parquet configs, plus `metrics/metrics.json`
when present) and never imports engines, corpora, models or routers.
"""

from atlas_build.explore.read import ExploreError, read_atlas
from atlas_build.explore.site import SiteReport, build_site

__all__ = ["ExploreError", "SiteReport", "build_site", "read_atlas"]
