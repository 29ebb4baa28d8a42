"""routing-atlas: build, validate and publish datasets of how Mixture-of-Experts models route tokens."""

__version__ = "0.1.0"


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (what manifests and
    metrics.json record as the code that made them)."""
    import subprocess
    from pathlib import Path

    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__
