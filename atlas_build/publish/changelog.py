"""The changelog: one entry per release, written from the diff against the previous release.

May import: `publish.snapshots`, `publish.versions`.
"""

from __future__ import annotations

from typing import Any

from atlas_build.atlas.schema import ROUTING_PREFIX
from atlas_build.publish.snapshots import ReleaseDiff, Snapshot
from atlas_build.publish.versions import Version


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _signed(value: int) -> str:
    return f"{value:+d}" if value else "0"


def _model_line(slug: str, model: dict[str, Any]) -> str:
    what = [f"`{model.get('model_id')}`"]
    if model.get("revision"):
        what.append(f"revision `{model['revision']}`")
    what.append(f"engine {model.get('engine')}")
    if model.get("random_init"):
        what.append("**random-init**")
    return f"`{slug}` ({', '.join(what)})"


def changelog_entry(diff: ReleaseDiff, new: Snapshot, version: Version, released: str) -> str:
    """This release's changelog section, in markdown."""
    random_init = {slug for slug, m in new.models.items() if m.get("random_init")}

    def model_label(slug: str) -> str:
        return f"`{slug}`" + (" (random-init)" if slug in random_init else "")

    def config_label(config: str, status: str | None = None) -> str:
        text = f"`{config}`" + (f" ({status})" if status else "")
        slug = config[len(ROUTING_PREFIX) :] if config.startswith(ROUTING_PREFIX) else None
        return text + (" random-init" if slug in random_init else "")

    built = (
        f"routing-atlas `{new.manifest.get('code_version')}`, "
        f"atlas schema version {new.manifest.get('schema_version')}"
    )
    lines = [f"## {version.tag} ({released})", ""]
    if diff.previous is None:
        lines += [f"First release. Built with {built}.", ""]
    else:
        lines += [f"Compared with v{diff.previous}. Built with {built}.", ""]

    lines += ["### Configs", ""]
    if diff.previous is None:
        lines += ["| config | rows | files |", "|---|---:|---:|"]
        for c in diff.configs:
            n_files = len(new.configs.get(c["config"], {}).get("files", []))
            lines.append(f"| {config_label(c['config'])} | {c['rows']} | {n_files} |")
    else:
        lines += [
            "| config | rows | change | rows added | rows removed | files |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for c in diff.configs:
            added = "?" if c["added"] is None else str(c["added"])
            removed = "?" if c["removed"] is None else str(c["removed"])
            kept = c["status"] == "kept"
            files = ("changed" if c["files_changed"] else "unchanged") if kept else c["status"]
            lines.append(
                f"| {config_label(c['config'], None if kept else c['status'])} | {c['rows']} "
                f"| {_signed(c['net'])} | {added} | {removed} | {files} |"
            )
        if any(not c["by_key"] for c in diff.configs):
            lines += [
                "",
                "`?`: the previous release's data were not at hand (Hub), so only the net change in rows is known.",
            ]
    lines.append("")

    lines += ["### Models", ""]
    models = diff.models
    if diff.previous is None:
        lines += [f"- {_model_line(s, m)}" for s, m in new.models.items()] or ["- None."]
    elif models.get("unknown"):
        lines.append("- Not compared: the previous release does not record its models.")
    elif not (models["added"] or models["removed"] or models["changed"]):
        lines.append("- No model added, removed or changed.")
    else:
        lines += [f"- Added: {_model_line(s, new.models[s])}" for s in models["added"]]
        lines += [f"- Removed: `{s}`" for s in models["removed"]]
        for slug, fields in models["changed"].items():
            what = "; ".join(f"{k} {a} → {b}" for k, (a, b) in fields.items())
            lines.append(f"- Changed: {model_label(slug)}: {what}")
    lines.append("")

    if diff.previous is not None:
        lines += ["### Schema changes", ""]
        lines += [f"- {change}" for change in diff.schema] or ["- None."]
        lines.append("")

    lines += ["### Metrics", ""]
    if diff.previous is None:
        if diff.new_metrics:
            lines += ["| model | metric | value |", "|---|---|---:|"]
            lines += [f"| {model_label(s)} | {m} | {_num(v)} |" for (s, m), v in diff.new_metrics.items()]
        else:
            lines.append("- No metrics in this release.")
    elif diff.metrics:
        lines += [
            f"| model | metric | v{diff.previous} | {version.tag} | change |",
            "|---|---|---:|---:|---:|",
        ]
        for row in diff.metrics:
            change = "–" if row["change"] is None else f"{row['change']:+.4g}"
            lines.append(
                f"| {model_label(row['model'])} | {row['metric']} | {_num(row['before'])} "
                f"| {_num(row['after'])} | {change} |"
            )
    elif diff.new_metrics:
        lines.append("- Headline metrics unchanged.")
    else:
        lines.append("- No metrics in this release.")
    lines.append("")
    return "\n".join(lines)


CHANGELOG_HEADER = (
    "# Changelog\n\n"
    "Every release of this atlas, newest first. A released version never changes: load one with its path "
    '`vX.Y.Z` (local releases) or `revision="vX.Y.Z"` (the Hub).\n\n'
)


def full_changelog(entry: str, previous: str | None) -> str:
    """The new entry on top of every earlier one (taken from the previous release's changelog)."""
    earlier = ""
    if previous and "\n## " in "\n" + previous:
        earlier = previous[("\n" + previous).index("\n## ") :].strip() + "\n"
    return CHANGELOG_HEADER + entry.rstrip() + "\n" + ("\n" + earlier if earlier else "")
