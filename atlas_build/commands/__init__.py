"""CLI commands, one module each, discovered by `atlas_build.cli` (module-level `command`)."""
