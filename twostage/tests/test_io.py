"""twostage.io: nothing a user owns is replaced or deleted, writes are atomic, a kill at any
write step leaves the old or the new complete folder (and the next run repairs the rest), and
outputs follow the user's umask."""
from __future__ import annotations

import os
import stat

import pytest

from twostage import io


def write_files(**files):
    def write(tmp):
        for name, text in files.items():
            io.write_text(tmp / name, text)
    return write


def test_new_and_empty_targets_are_written(tmp_path):
    io.replace_directory(tmp_path / "new", write_files(a="1"), "run")
    assert (tmp_path / "new" / "a").read_text() == "1"
    assert io.marker_kind(tmp_path / "new") == "run"
    (tmp_path / "empty").mkdir()
    io.replace_directory(tmp_path / "empty", write_files(a="2"), "run")
    assert (tmp_path / "empty" / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_our_own_folder_of_the_same_kind_is_replaced_whole(tmp_path):
    target = tmp_path / "run"
    io.replace_directory(target, write_files(a="old", b="old"), "run")
    io.replace_directory(target, write_files(a="new"), "run")
    assert sorted(p.name for p in target.iterdir()) == [io.MARKER, "a"]
    assert (target / "a").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: (p.mkdir(), (p / "thesis.tex").write_text("mine")), "did not write"),
    (lambda p: p.write_text("a file"), "not a folder"),
    (lambda p: io.replace_directory(p, write_files(x="1"), "checkpoint"), "checkpoint, not a run"),
])
def test_anything_else_is_refused_and_left_untouched(tmp_path, setup, message):
    target = tmp_path / "out"
    setup(target)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(io.OwnershipError, match=message) as e:
        io.replace_directory(target, write_files(a="1"), "run")
    assert "--force" in str(e.value) and str(target) in str(e.value)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_force_moves_the_users_files_aside_never_deletes(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "thesis.tex").write_text("mine")
    io.replace_directory(target, write_files(a="1"), "run", force=True)
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.replaced-")]
    assert len(aside) == 1 and (aside[0] / "thesis.tex").read_text() == "mine"
    assert (target / "a").read_text() == "1"


def test_failed_write_keeps_the_previous_folder_and_leaves_nothing(tmp_path):
    target = tmp_path / "run"
    io.replace_directory(target, write_files(a="old"), "run")

    def broken(tmp):
        io.write_text(tmp / "a", "half")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        io.replace_directory(target, broken, "run")
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4])  # a, marker, old aside, new in
def test_a_kill_at_each_rename_is_recovered(tmp_path, monkeypatch, kill_at):
    """Fault injection: the process dies (no cleanup runs) at the n-th os.replace of a folder
    replacement; the next replacement (or recover_leftovers) restores a complete folder."""
    target = tmp_path / "run"
    io.replace_directory(target, write_files(a="old"), "run")
    real_replace, calls = os.replace, []

    class Killed(BaseException):
        pass

    def dying_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == kill_at:
            raise Killed
        return real_replace(src, dst)
    monkeypatch.setattr(io.os, "replace", dying_replace)
    monkeypatch.setattr(io.shutil, "rmtree", lambda *a, **k: None)  # a kill runs no cleanup
    with pytest.raises(Killed):
        io.replace_directory(target, write_files(a="new"), "run")
    monkeypatch.undo()
    notes = io.recover_leftovers(target)
    assert (target / "a").read_text() in ("old", "new")
    assert [p.name for p in tmp_path.iterdir()] == ["run"], notes
    assert notes  # it says what it repaired


def test_kill_between_the_two_renames_restores_the_old_folder(tmp_path):
    target = tmp_path / "run"
    io.replace_directory(target, write_files(a="old"), "run")
    old = tmp_path / f".run{io.OLD_TAG}x"
    old.mkdir()
    os.replace(target, old / "previous")           # the first rename happened, then a kill
    (tmp_path / f".run{io.TMP_TAG}y").mkdir()       # and the new copy was never renamed
    notes = io.recover_leftovers(target)
    assert (target / "a").read_text() == "old"
    assert any("restored" in n for n in notes)
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_leftovers_are_matched_literally_not_as_a_glob(tmp_path):
    """``--out 'b/run[1]'``: the clean-up of run[1] must not take run1's backup (a glob reads
    ``[1]`` as a character class, matching ``.run1...``: the only copy after a kill)."""
    other = tmp_path / f".run1{io.OLD_TAG}x"
    (other / "previous").mkdir(parents=True)
    (other / "previous" / "a").write_text("the only copy")
    notes = io.recover_leftovers(tmp_path / "run[1]")
    assert notes == [] and (other / "previous" / "a").read_text() == "the only copy"
    mine = tmp_path / f".run[1]{io.TMP_TAG}y"
    mine.mkdir()
    assert io.recover_leftovers(tmp_path / "run[1]") and not mine.exists() and other.exists()


def test_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        io.write_text(tmp_path / "f.txt", "x")
        io.replace_directory(tmp_path / "d", write_files(a="1"), "run")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "d" / "a").stat().st_mode) == 0o644


def test_ensure_writable_dir(tmp_path):
    assert io.ensure_writable_dir(tmp_path / "a" / "b", "--out").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        io.ensure_writable_dir(tmp_path / "file", "--out")
    with pytest.raises(PermissionError, match="not writable"):
        io.ensure_writable_dir(tmp_path / "file" / "sub", "--out")


def test_thread_governor_gives_way_to_a_busy_core(monkeypatch):
    """Threads = max minus the cores other processes kept busy (sampled from /proc/stat minus
    this process's CPU time); never above max, at least 1; off with one thread or by env."""
    from twostage import env
    samples = iter([(0.0, 0.0, 0.0),      # construction
                    (1.0, 0.1, 0.1),      # idle machine: only our 0.1 s
                    (2.0, 1.2, 0.2),      # another process used 1.0 core-second in 1 s
                    (3.0, 1.5, 0.45)])    # 0.05 cores of others: idle again
    monkeypatch.setattr(env.ThreadGovernor, "_sample", staticmethod(lambda: next(samples)))
    monkeypatch.setattr(env.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("TWOSTAGE_ADAPTIVE_THREADS", raising=False)
    governor = env.ThreadGovernor(2, settle_seconds=0)
    assert [governor.threads() for _ in range(3)] == [2, 1, 2]
    assert env.ThreadGovernor(1).threads() == 1
    monkeypatch.setenv("TWOSTAGE_ADAPTIVE_THREADS", "0")
    assert not env.ThreadGovernor(2, settle_seconds=0).enabled


def test_thread_governor_says_once_that_rounding_changes(monkeypatch, caplog):
    from twostage import env
    samples = iter([(0.0, 0.0, 0.0), (1.0, 1.1, 0.1), (2.0, 2.2, 0.2)])
    monkeypatch.setattr(env.ThreadGovernor, "_sample", staticmethod(lambda: next(samples)))
    monkeypatch.setattr(env.os, "cpu_count", lambda: 2)
    monkeypatch.delenv("TWOSTAGE_ADAPTIVE_THREADS", raising=False)
    governor = env.ThreadGovernor(2, settle_seconds=0)
    assert [governor.threads(), governor.threads()] == [1, 1]
    warnings = [r for r in caplog.records if "TWOSTAGE_ADAPTIVE_THREADS=0" in r.getMessage()]
    assert len(warnings) == 1 and "float rounding" in warnings[0].getMessage()
