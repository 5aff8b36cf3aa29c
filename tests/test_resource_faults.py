"""Disk full, a read-only folder, a reader killed for memory: one line naming the path and what to
do, a non-zero exit, what was written stays valid, and no worker process is left behind."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import psutil
import pytest

from persam_lib.cli import main
from persam_lib.features.products import mask_path, slide_done
from persam_lib.features.store import SlideFeatures, is_complete, write_features

PERSAM = str(Path(sys.executable).parent / "persam")


def _no_temp_files(out: Path) -> bool:
    return not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _error_line(stderr: str) -> str:
    """The one error line (progress bars share stderr); no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("persam ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _failures(out) -> dict[str, str]:
    return pd.read_csv(out / "failures.csv").set_index("slide_id")["reason"].to_dict()


def test_disk_full_while_writing_stops_the_run_and_keeps_what_was_finished(tiny_cohort, tmp_path, monkeypatch, capsys):
    real = h5py.Group.create_dataset

    def full_at_s0003(self, name, *args, **kwargs):  # the disk fills up while S0003's features are written
        if self.file.attrs.get("slide_id") == "S0003" and name == "coords":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full_at_s0003)
    out = tmp_path / "features"
    code = main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0", "--batch-size", "16"])
    captured = capsys.readouterr()
    assert code == 1
    line = _error_line(captured.err)
    assert line == f"persam extract: error: {out / 'S0003.h5'}: No space left on device; free disk space (or choose another output folder) and run the same command again: finished work is kept."
    assert slide_done(out, "S0001") and slide_done(out, "S0002")  # finished before the fault: complete
    assert not (out / "S0003.h5").exists() and not mask_path(out, "S0003").exists()  # not half there
    assert not list(out.glob("S000[4-8].h5"))  # the run stopped: later slides were not tried one by one
    assert "No space left on device" in _failures(out)["S0003"]
    assert _no_temp_files(out) and h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE) == []
    monkeypatch.undo()
    assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"]) == 0  # space freed: it resumes
    assert "6 written, 2 already done, 0 failed" in capsys.readouterr().out and _failures(out) == {}


def test_hdf5_write_on_a_full_disk_closes_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    real = h5py.Group.create_dataset

    def full(self, name, *args, **kwargs):
        if name == "coords":
            raise OSError(errno.ENOSPC, "Can't write data (file write failed: errno = 28, error message = 'No space left on device')")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", full)
    data = SlideFeatures("S1", np.ones((4, 3), np.float32), np.zeros((4, 2), np.int64), 256)
    with pytest.raises(OSError) as caught:
        write_features(tmp_path / "S1.h5", data)
    assert caught.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # no temporary file, nothing under the final name
    assert h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE) == []  # the HDF5 file was closed


def test_a_real_full_disk(tiny_cohort, tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        out = mount / "features"
        result = subprocess.run([PERSAM, "extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        line = _error_line(result.stderr)
        assert "No space left on device; free disk space" in line and str(out) in line
        done = sorted(p for p in out.glob("S*.h5"))
        assert all(is_complete(p) and mask_path(out, p.stem).is_file() for p in done)
        assert _no_temp_files(out)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_read_only_output_folder_is_refused_before_any_work(tiny_cohort, tmp_path, monkeypatch, capsys):
    out = tmp_path / "features"
    real = Path.write_bytes

    def read_only(self, data):
        if out in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"]) == 1
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"persam extract: error: {out}: cannot write into this folder (Read-only file system); the folder is on a read-only file system")
    assert "choose another output folder" in line
    assert not list(out.rglob("*.h5")) and not (out / "failures.csv").exists()


def test_a_folder_that_turns_read_only_mid_run_stops_the_run(tiny_cohort, tmp_path, monkeypatch, capsys):
    import persam_lib.features.products as products

    real = products.save_mask
    written = []

    def turns_read_only(path, mask, downsample):
        if len(written) == 2:
            raise OSError(errno.EROFS, "Read-only file system", str(Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")))
        written.append(path)
        return real(path, mask, downsample)

    monkeypatch.setattr(products, "save_mask", turns_read_only)
    out = tmp_path / "features"
    assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"]) == 1
    line = _error_line(capsys.readouterr().err)
    assert line == f"persam extract: error: {mask_path(out, 'S0003')}: Read-only file system; the folder is on a read-only file system; choose another output folder."
    assert sorted(p.stem for p in out.glob("S*.h5")) == ["S0001", "S0002"] and all(is_complete(p) for p in out.glob("S*.h5"))
    assert list(_failures(out)) == ["S0003"] and _no_temp_files(out)


def test_an_output_path_that_is_a_file_is_one_line(tiny_cohort, tmp_path):
    taken = tmp_path / "features"
    taken.write_text("not a folder")
    result = subprocess.run([PERSAM, "extract", str(tiny_cohort.manifest_path), "--out", str(taken), "--readers", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert [_error_line(result.stderr)] == [f"persam extract: error: {taken}: is a file, not a folder; choose another output folder, or move that file away."]


def test_a_reader_killed_for_memory_is_one_line_and_leaves_no_worker(tiny_cohort, tmp_path, monkeypatch, capsys):
    import persam_lib.features.extract as extract_module

    parent = os.getpid()
    real = extract_module.read_patch

    def oom_at_s0006(reader, xy, plan):
        if os.getpid() != parent and Path(reader.path).stem == "S0006":
            os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
        return real(reader, xy, plan)

    monkeypatch.setattr(extract_module, "read_patch", oom_at_s0006)  # the DataLoader forks: workers see it
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "features"
    started = time.time()
    assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "1", "--batch-size", "8"]) == 1
    assert time.time() - started < 60
    line = _error_line(capsys.readouterr().err)
    assert line.startswith("persam extract: error: a patch-reading worker was killed (likely out of memory): rerun with --readers 0 or a smaller --batch-size; finished slides are kept (DataLoader worker (pid")
    # the worker reads at most two batches ahead of the encoder, so the first slides were finished
    assert all(slide_done(out, s) for s in ["S0001", "S0002", "S0003"])
    assert not (out / "S0006.h5").exists() and all(is_complete(p) for p in out.glob("S*.h5")) and _no_temp_files(out)
    deadline = time.time() + 10
    while time.time() < deadline and _live({p.pid for p in psutil.Process().children(recursive=True)} - before):
        time.sleep(0.1)
    assert not _live({p.pid for p in psutil.Process().children(recursive=True)} - before), "reader workers outlived the run"


def _live(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


SLOW_READER = """
import os, sys, time
import persam_lib.features.extract as extract_module
parent, real = os.getpid(), extract_module.read_patch
def stuck(*args):
    if os.getpid() != parent:
        time.sleep(300)  # a reader busy with a huge region: only the kernel can stop it in time
    return real(*args)
extract_module.read_patch = stuck
from persam_lib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_reader_workers_die_with_a_killed_extraction(tiny_cohort, tmp_path):
    out = tmp_path / "features"
    process = subprocess.Popen([sys.executable, "-c", SLOW_READER, "extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[psutil.Process] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not workers:
            workers = [c for c in psutil.Process(process.pid).children(recursive=True) if c.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.1)
        assert workers, "the extraction never started a reader worker"
        time.sleep(1.0)  # the worker is now inside its (stuck) read
        assert all(w.is_running() for w in workers)
        process.send_signal(signal.SIGKILL)  # the parent alone, as the out-of-memory killer would
        process.wait(timeout=10)
        deadline = time.time() + 3  # well before PyTorch's own 5 s watchdog, and the reader's 300 s sleep
        while time.time() < deadline and _live([w.pid for w in workers]):
            time.sleep(0.05)
        assert not _live([w.pid for w in workers]), "a reader worker outlived its parent"
    finally:
        for w in workers:
            try:
                w.kill()
            except psutil.NoSuchProcess:
                pass
        if process.poll() is None:
            process.kill()


def test_a_dask_task_raises_a_full_disk_instead_of_charging_one_slide(tiny_cohort, tmp_path, monkeypatch):
    import persam_lib.features.products as products
    from persam_lib.features.distributed import extract_one_slide
    from persam_lib.features.config import ExtractConfig
    from persam_lib.features.products import WriteStopped

    row = tiny_cohort.slides.iloc[0]
    monkeypatch.setattr(products, "write_features", lambda path, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(WriteStopped) as caught:  # raised on the worker: the driver stops the run
        extract_one_slide(row.slide_id, row.path, None, str(tmp_path), ExtractConfig())
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / f"{row.slide_id}.h5")
    assert not list(tmp_path.rglob("*.*"))
    monkeypatch.setattr(products, "write_features", lambda path, data: (_ for _ in ()).throw(ValueError("odd slide")))
    assert extract_one_slide(row.slide_id, row.path, None, str(tmp_path), ExtractConfig()) == (row.slide_id, "ValueError: odd slide")


def test_extraction_settings_are_checked_when_made():
    from persam_lib.features.config import ExtractConfig

    with pytest.raises(ValueError, match=r"The 'batch_size' parameter \(--batch-size\) must be an int >= 1. Got 0 instead."):
        ExtractConfig(batch_size=0)
    with pytest.raises(ValueError, match=r"'num_workers' parameter \(--readers\)"):
        ExtractConfig(num_workers=-2)
