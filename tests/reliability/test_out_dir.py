"""Output folders that never damage a user's files: where `atlas build` may write, the race of three builds
into one new folder, symbolic links in the state folder, and file modes under the umask."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from atlas_build.atlas.lock import AtlasLock
from atlas_build.errors import LockError

from ._support import FAKE_ARGS, FakeEngine, snapshot
from .conftest import cli, copy_of
from .test_bad_inputs import refused


def fake_build(out: Path, *extra: str) -> list[str]:
    return ["build", "--out", str(out), *FAKE_ARGS, *extra]


# ---- where a build may write --------------------------------------------------------------------------
def test_a_project_folder_is_refused_and_left_as_it_was(tmp_path, fakes):
    project = tmp_path / "project"
    project.mkdir()
    (project / "README.md").write_text("# my project\n")
    (project / "LICENSE.md").write_text("MIT\n")
    (project / "src").mkdir()
    refused(
        fake_build(project),
        project,
        "already holds files that are not an atlas (LICENSE.md, README.md, src)",
        "nothing was written",
        "pass --out with a new or empty folder",
    )
    assert (project / "README.md").read_text() == "# my project\n"


@pytest.mark.parametrize("where", ["root", "home"])
def test_root_and_home_are_refused(tmp_path, fakes, monkeypatch, where):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    out = Path("/") if where == "root" else home
    before = sorted(p.name for p in out.iterdir())
    result = cli(fake_build(out))
    assert result.exit_code == 2, result.output
    assert ("is the root of the file system" if where == "root" else "is your home folder") in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_folder_inside_another_atlas_is_refused(tmp_path, fakes, fake_reference):
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    before = snapshot(atlas)
    for inner in (atlas / "nested", atlas / "senses" / "deeper" / "x"):
        result = cli(fake_build(inner))
        assert result.exit_code == 2 and f"is inside the atlas {atlas}" in result.output, result.output
    assert snapshot(atlas) == before


def test_an_unexpanded_tilde_means_the_home_folder(tmp_path, fakes, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = cli(fake_build(Path("~/atlas")))  # a quoted '~/atlas' reaches us unexpanded
    assert result.exit_code == 0, result.output
    assert (home / "atlas" / "manifest.json").exists()
    assert not (tmp_path / "~").exists()  # never a folder literally named '~' (and a later `rm -r ~`)


def test_new_empty_and_existing_atlas_folders_are_accepted(tmp_path, fakes, fake_reference):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(fake_build(empty)).exit_code == 0
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    resumed = cli(fake_build(atlas))
    assert resumed.exit_code == 0 and "0 shards written, 10 resumed" in resumed.output


def test_a_folder_with_a_foreign_manifest_is_refused(tmp_path, fakes):
    for name, content in {"list": "[]", "other": '{"format": "something-else"}'}.items():
        out = tmp_path / name
        out.mkdir()
        (out / "manifest.json").write_text(content)
        refused(fake_build(out), out, "not an atlas")


# ---- symbolic links in the state folder ---------------------------------------------------------------
def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path, fakes, fake_reference):
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    victim = tmp_path / "bashrc"
    victim.write_text("export PATH=...\n")
    (atlas / ".atlas").mkdir(exist_ok=True)
    (atlas / ".atlas" / "lock").symlink_to(victim)
    # Every reader refuses a link in the build state (issue 31), before the lock would.
    refused(fake_build(atlas), atlas, ".atlas/lock is a symbolic link", "refused", code=3)
    assert victim.read_text() == "export PATH=...\n"


def test_a_symlinked_state_folder_is_refused(tmp_path, fakes, fake_reference):
    atlas = copy_of(fake_reference, tmp_path / "atlas")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    import shutil

    shutil.rmtree(atlas / ".atlas")
    (atlas / ".atlas").symlink_to(elsewhere)
    refused(fake_build(atlas), atlas, ".atlas is a symbolic link", "inside the atlas only")
    assert list(elsewhere.iterdir()) == []  # no marker, no lock written outside the atlas
    with pytest.raises(LockError, match="symbolic link"):
        AtlasLock(atlas).acquire()


# ---- three builds into one new folder -----------------------------------------------------------------
class BlockingEngine(FakeEngine):
    """The fake engine, holding its first shard until `release` is set (build A keeps the lock meanwhile)."""

    release = threading.Event()

    def route(self, texts):
        assert BlockingEngine.release.wait(60), "build A was never released"
        return super().route(texts)


def test_three_builds_into_one_new_folder_exactly_one_writes_and_nothing_is_lost(
    tmp_path, fakes, monkeypatch
):
    """B creates DIR, A takes the lock, B is refused, then C starts: B's clean-up must not remove DIR (with
    A's lock inside), and C must be refused, not write a second corpus beside A (issue 12's race)."""
    from atlas_build.builder import BuildConfig, run_build
    from atlas_build.engines import ENGINES
    from validation.integrity import verify_files

    monkeypatch.setitem(ENGINES._entries, "blocking", f"{__name__}:BlockingEngine")
    BlockingEngine.release.clear()
    out = tmp_path / "new"
    b_created, a_locked = threading.Event(), threading.Event()
    real_acquire = AtlasLock.acquire

    def ordered_acquire(lock):
        who = threading.current_thread().name
        if who == "B":  # B has created DIR; it asks for the lock only once A holds it
            b_created.set()
            assert a_locked.wait(30)
            return real_acquire(lock)
        held = real_acquire(lock)
        if who == "A":
            a_locked.set()
        return held

    monkeypatch.setattr(AtlasLock, "acquire", ordered_acquire)
    outcomes: dict[str, object] = {}

    def build(who: str, max_lemmas: int, engine: str):
        config = BuildConfig(
            model="fake-moe", out=out, engine=engine, max_lemmas=max_lemmas, texts_per_shard=1, progress=False
        )
        try:
            outcomes[who] = run_build(config, log=lambda *_: None)
        except Exception as error:  # noqa: BLE001 - the outcome is the assertion
            outcomes[who] = error

    threads = {
        "B": threading.Thread(target=build, args=("B", 2, "fake"), name="B"),
        "A": threading.Thread(target=build, args=("A", 2, "blocking"), name="A"),
        "C": threading.Thread(target=build, args=("C", 40, "fake"), name="C"),
    }
    threads["B"].start()
    assert b_created.wait(30) and out.is_dir()
    threads["A"].start()
    threads["B"].join(30)
    assert isinstance(outcomes["B"], LockError), outcomes["B"]
    assert out.is_dir() and (out / ".atlas" / "lock").exists()  # B removed nothing of A's
    threads["C"].start()
    threads["C"].join(30)
    assert isinstance(outcomes["C"], LockError), outcomes["C"]
    BlockingEngine.release.set()
    threads["A"].join(60)
    assert not isinstance(outcomes["A"], Exception), outcomes["A"]

    from atlas_build.atlas.manifest import Manifest

    manifest = Manifest.load(out)
    assert len(manifest.builds) == 1 and manifest.corpus_counts["options"]["max_lemmas"] == 2
    assert verify_files(out, manifest) == []
    assert not (out / ".atlas" / "lock").exists()
    assert outcomes["A"].shards_written == 10


def test_a_refused_build_removes_the_empty_folder_it_made(tmp_path):
    """Nothing else holds it: a build refused before writing leaves no empty folder behind."""
    out = tmp_path / "fresh"
    result = cli(["build", "--model", "tiny-deepseek-v4", "--out", str(out), "--no-progress"])
    assert result.exit_code == 2 and not out.exists()


# ---- file modes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_and_folders_get_the_usual_modes_under_the_umask(tmp_path, fakes, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / f"atlas-{umask:o}"
        assert cli(fake_build(out)).exit_code == 0
    finally:
        os.umask(old)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        expected = (0o777 if path.is_dir() else 0o666) & ~umask
        assert mode == expected, f"{path.relative_to(out)}: {mode:o}, expected {expected:o}"
    assert json.loads((out / "manifest.json").read_text())["format"] == "routing-atlas"


def test_input_paths_with_an_unexpanded_tilde_mean_the_home_folder(tmp_path, monkeypatch):
    from atlas_build.builder import BuildConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    config = BuildConfig(model="x", out=tmp_path / "a", corpus="traces", traces="~/t.jsonl")
    assert config.traces == str(tmp_path / "t.jsonl")
    assert BuildConfig(model="x", out=tmp_path / "a", wordnet_dir="~/wn").wordnet_dir == str(tmp_path / "wn")


def test_another_programs_dot_atlas_folder_does_not_make_an_atlas(tmp_path, fakes):
    """`~/.atlas` of some other tool must not make every folder below it 'inside an atlas'."""
    home = tmp_path / "home"
    (home / ".atlas").mkdir(parents=True)
    (home / ".atlas" / "settings.toml").write_text("theme = 'dark'\n")
    out = home / "work" / "atlas"
    result = cli(fake_build(out))
    assert result.exit_code == 0, result.output
    assert (home / ".atlas" / "settings.toml").read_text() == "theme = 'dark'\n"
