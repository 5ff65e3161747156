import os
import stat

import onnx
import pytest

from calib.errors import CalibError
from calib.fsutil import (atomic_path, atomic_write_text, check_output_dir, check_output_file, current_umask,
                          is_calib_onnx, make_dir, mark_calib_onnx, stage_owner, staged_dir, temp_target)


@pytest.fixture()
def umask():
    def set_mask(mask):
        os.umask(mask)
        return mask

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_current_umask_reads_without_changing_it(umask):
    umask(0o027)
    assert current_umask() == 0o027
    assert current_umask() == 0o027


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_and_folders_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_write_text(tmp_path / "new" / "a.txt", "x")
    assert _mode(tmp_path / "new" / "a.txt") == 0o666 & ~mask      # not mkstemp's 0600
    assert _mode(tmp_path / "new") == 0o777 & ~mask
    assert _mode(make_dir(tmp_path / "made" / "deep")) == 0o777 & ~mask
    with staged_dir(tmp_path / "run") as stage:
        (stage / "report.json").write_text("{}")
    assert _mode(tmp_path / "run") == 0o777 & ~mask                 # not mkdtemp's 0700


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]


def test_temp_names_read_back():
    assert temp_target(".X.cache.ab_c12.tmp") == "X.cache"
    assert temp_target(".index.json.k2j3h4.tmp") == "index.json"
    assert temp_target("X.cache") is None and temp_target(".x.tmp") is None


def test_staged_dir_is_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "run") as stage:
            (stage / "report.md").write_text("half")
            raise RuntimeError
    assert os.listdir(tmp_path) == []
    (tmp_path / "empty").mkdir()
    with staged_dir(tmp_path / "empty") as stage:
        (stage / "a").write_text("x")
    assert os.listdir(tmp_path / "empty") == ["a"]


@pytest.mark.parametrize("case", ["folder", "under a file", "unwritable", "not ours"])
def test_check_output_file_refuses_before_any_work(tmp_path, case):
    (tmp_path / "file.txt").write_text("precious")
    path = {"folder": tmp_path, "under a file": tmp_path / "file.txt" / "out.onnx",
            "unwritable": "/proc/self/out.onnx", "not ours": tmp_path / "file.txt"}[case]
    message = {"folder": "is a folder, not a file", "under a file": "is a file, not a folder",
               "unwritable": "no permission", "not ours": "calib did not write it"}[case]
    with pytest.raises(CalibError, match=message) as e:
        check_output_file(path)
    assert "\n" not in str(e.value)
    assert (tmp_path / "file.txt").read_text() == "precious"


def test_check_output_file_allows_new_files_our_files_and_overwrite(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "x.onnx") == tmp_path / "new" / "deeper" / "x.onnx"
    assert not (tmp_path / "new").exists()                     # a check creates nothing
    existing = tmp_path / "x.txt"
    existing.write_text("mine")
    assert check_output_file(existing, written_by_calib=lambda p: p.read_text() == "mine") == existing
    with pytest.raises(CalibError, match="--overwrite"):
        check_output_file(existing, written_by_calib=lambda p: False)
    with pytest.raises(CalibError, match="--overwrite"):
        check_output_file(existing, written_by_calib=lambda p: 1 / 0)  # a failing recognizer: not ours
    assert check_output_file(existing, overwrite=True) == existing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(CalibError, match="no permission"):
            check_output_file(folder / "x.onnx")
        with pytest.raises(CalibError, match="no permission"):
            check_output_dir(folder / "run")
    finally:
        folder.chmod(0o755)


def test_check_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CalibError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(CalibError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "run")
    with pytest.raises(CalibError, match="not empty"):
        check_output_dir(tmp_path)
    assert check_output_dir(tmp_path, empty=False) == tmp_path   # a cache folder may hold files
    with pytest.raises(CalibError, match="no permission"):
        check_output_dir("/proc/self/run")
    assert check_output_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()


def test_make_dir_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CalibError, match="is a file, not a folder"):
        make_dir(tmp_path / "file")
    with pytest.raises(CalibError, match="no permission"):
        make_dir("/proc/self/calib")


def test_calib_onnx_files_are_recognized_by_their_provenance(tmp_path, tiny_classifier):
    assert not is_calib_onnx(tiny_classifier)
    (tmp_path / "notes.txt").write_text("not a model")
    assert not is_calib_onnx(tmp_path / "notes.txt")
    model = onnx.load(str(tiny_classifier))
    mark_calib_onnx(model, flavor="ort", cache="x.cache")
    mark_calib_onnx(model, flavor="tensorrt")                      # once, updated
    assert [p.key for p in model.metadata_props].count("calib") == 1
    onnx.save(model, str(tmp_path / "int8.onnx"))
    assert is_calib_onnx(tmp_path / "int8.onnx")
    assert check_output_file(tmp_path / "int8.onnx", written_by_calib=is_calib_onnx)
    with pytest.raises(CalibError, match="calib did not write it"):
        check_output_file(tiny_classifier, written_by_calib=is_calib_onnx)


# -- issue 22, row 1: --out and --cache-dir, two runs with one --out --------------------------

def test_the_output_folder_may_not_be_or_hold_the_cache_folder(tmp_path):
    out = tmp_path / "x"
    for cache_dir in (out, tmp_path / "." / "x", out / "caches"):
        with pytest.raises(CalibError, match="--cache-dir") as e:
            check_output_dir(out, apart_from={"--cache-dir": cache_dir})
        assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []
    # A cache folder beside the output folder, or holding it, is fine.
    assert check_output_dir(out, apart_from={"--cache-dir": tmp_path / "caches"}) == out
    assert check_output_dir(out, apart_from={"--cache-dir": tmp_path}) == out


def test_of_two_commands_writing_one_out_the_second_ends_in_one_line(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CalibError, match="another command") as e:
        with staged_dir(out) as first:
            (first / "report.json").write_text("first")
            with staged_dir(out) as second:          # checked while `out` did not exist yet
                (second / "report.json").write_text("second")
            # the second finished first and owns `out`; the first must not mix into it or lose it
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == ["run"] and (out / "report.json").read_text() == "second"


def test_a_staged_folder_carries_its_owner_pid(tmp_path):
    with staged_dir(tmp_path / "run") as stage:
        assert stage_owner(stage.name) == os.getpid()
    assert stage_owner(".run.pid12.ab_c1.partial") == 12 and stage_owner(".run.pid12.ab_c1.partial.x") is None
    assert stage_owner(".run.abc123.partial") is None and stage_owner("run.pid1.x.partial") is None


# -- issue 22, row 3: stages of dead commands are cleaned -----------------------------------

def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_stages_of_dead_commands_are_removed_live_ones_kept(tmp_path):
    import fcntl
    import subprocess
    import sys

    dead = _dead_pid()
    stale = tmp_path / f".old.pid{dead}.k2j3h4.partial"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "int8.onnx").write_text("half")
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".other.pid{alive.pid}.aaaaaa.partial"
        live.mkdir()
        # Its pid means nothing here (another host on a shared folder), but its owner holds the lock.
        remote = tmp_path / f".remote.pid{dead}.bbbbbb.partial"
        remote.mkdir()
        fd = os.open(remote, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            (tmp_path / "keep.partial").mkdir()               # not a staged folder's name
            with staged_dir(tmp_path / "run") as stage:
                (stage / "a").write_text("x")
        finally:
            os.close(fd)
        assert sorted(os.listdir(tmp_path)) == sorted([live.name, remote.name, "keep.partial", "run"])
    finally:
        alive.kill()
        alive.wait()
