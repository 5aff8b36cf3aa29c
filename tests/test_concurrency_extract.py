"""One extraction per output folder: a second `persam extract` on the same --out stops at once, and
a run removes only the temporary files whose writer is gone."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from persam_lib.cli import main
from persam_lib.features.products import slide_done
from persam_lib.features.store import is_complete, read_features
from persam_lib.io.locks import FolderBusyError, output_lock

PERSAM = str(Path(sys.executable).parent / "persam")

SLOW_EXTRACT = """
import os, sys, time
import persam_lib.features.extract as extract_module
real, go = extract_module.read_patch, os.environ["GO_FILE"]
def slow(*args):
    deadline = time.time() + 60
    while not os.path.exists(go) and time.time() < deadline:  # a long extraction: the second run meets it at work
        time.sleep(0.02)
    return real(*args)
extract_module.read_patch = slow
from persam_lib.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_extract_on_the_same_folder_stops_at_once(tiny_cohort, tmp_path):
    out = tmp_path / "features"
    args = ["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"]
    go = tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", SLOW_EXTRACT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "GO_FILE": str(go)})
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / ".persam.lock.owner").is_file():
            time.sleep(0.05)
        assert (out / ".persam.lock.owner").is_file(), "the first run never took the folder"
        started = time.time()
        second = subprocess.run([PERSAM, *args], capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run should still be working"
        assert second.returncode == 2 and second.stdout == ""
        message = second.stderr.strip()
        assert len(message.splitlines()) == 1
        assert message.startswith(f"persam extract: error: {out}: another persam run is working on this folder (persam extract, pid {first.pid} on ")
        assert message.endswith("). Wait for it to finish, or use another output folder.")
        assert time.time() - started < 30
        go.touch()  # the first run may now read its patches
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, stderr[-2000:]
    assert "extract: 8 written, 0 already done, 0 failed" in stdout  # every slide written once, by the first run
    files = sorted(out.glob("S*.h5"))
    assert len(files) == 8 and all(is_complete(p) and slide_done(out, p.stem) for p in files)
    assert all(len(read_features(p).features) > 0 for p in files)
    assert not (out / ".persam.lock.owner").exists()  # released when the first run ended
    assert not [p for p in out.rglob("*.tmp")]


def test_every_extraction_path_respects_the_lock(tiny_cohort, tmp_path, capsys):
    from persam_lib.features.distributed import extract_distributed
    from persam_lib.features.extract import extract
    from persam_lib.features.importing import import_features

    out = tmp_path / "features"
    (tmp_path / "clam").mkdir()
    (tmp_path / "clam" / "S0001.h5").write_bytes(b"")
    with output_lock(out, "train"):
        assert main(["extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"]) == 2
        assert "another persam run is working on this folder (persam train, pid" in capsys.readouterr().err
        with pytest.raises(FolderBusyError):
            extract(tiny_cohort, out, progress=False)
        with pytest.raises(FolderBusyError):
            extract_distributed(tiny_cohort, out, n_workers=1, progress=False)  # refused before a cluster starts
        with pytest.raises(FolderBusyError):
            import_features(tiny_cohort, tmp_path / "clam", out, "clam")
    assert not list(out.glob("*.h5")) and not (out / "extract_config.json").exists()


def test_only_temporary_files_of_dead_writers_are_removed(tiny_cohort, tiny_features, tmp_path):
    out = tmp_path / "features"
    shutil.copytree(tiny_features, out)
    gone = subprocess.Popen(["true"])
    gone.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = [out / f".S0001.h5.{gone.pid}.tmp", out / "masks" / f".S0001.png.{gone.pid}.tmp"]
        live = [out / f".S0002.h5.{sleeper.pid}.tmp", out / "masks" / f".S0002.png.{sleeper.pid}.tmp", out / f".S0003.h5.{os.getpid()}.tmp"]
        for path in dead + live:
            path.write_bytes(b"half written")
        result = subprocess.run([PERSAM, "extract", str(tiny_cohort.manifest_path), "--out", str(out), "--readers", "0"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "0 written, 8 already done, 0 failed" in result.stdout
        assert not any(p.exists() for p in dead)  # left by a run that was killed mid-write
        assert all(p.read_bytes() == b"half written" for p in live)  # another live process is still writing these
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_next_slides_are_planned_while_the_first_streams(monkeypatch):
    """Planning (tissue, grid) runs in a background thread: the first slide's plan comes out as soon
    as it is made, and the next ones are made while the caller streams it (events, not timings)."""
    import threading

    from persam_lib.features import extract as extraction

    release = {s: threading.Event() for s in ("a", "b", "bad", "c")}
    planned = {s: threading.Event() for s in release}
    threads: list[str] = []

    def gated_plan(slide_id, path, mpp, config):
        assert release[slide_id].wait(10)
        threads.append(threading.current_thread().name)
        planned[slide_id].set()
        if slide_id == "bad":
            raise OSError("unreadable")
        return slide_id

    monkeypatch.setattr(extraction, "_plan_one", gated_plan)
    summary = extraction.ExtractSummary()
    chunks = extraction.planned_chunks([("a", "", None), ("b", "", None), ("bad", "", None), ("c", "", None)], extraction.ExtractConfig(), summary)
    release["a"].set()
    assert next(chunks) == ["a"]  # out before b is even allowed to be planned
    for slide in ("b", "bad", "c"):  # "streaming" slide a: the rest are planned meanwhile
        release[slide].set()
        assert planned[slide].wait(10)
    assert next(chunks) == ["b", "c"] and list(chunks) == []
    assert summary.failed == {"bad": "OSError: unreadable"}
    assert all(name.startswith("persam-plan") for name in threads)


def test_no_reader_process_starts_while_a_slide_is_being_planned(monkeypatch):
    """The planner holds the fork guard while it plans; starting the readers waits for it."""
    import threading

    from persam_lib.features import extract as extraction

    inside, leave = threading.Event(), threading.Event()

    def slow_plan(slide_id, path, mpp, config):
        inside.set()
        assert leave.wait(10)
        return slide_id

    monkeypatch.setattr(extraction, "_plan_one", slow_plan)
    guard = threading.Lock()
    chunks = extraction.planned_chunks([("a", "", None)], extraction.ExtractConfig(), extraction.ExtractSummary(), guard)
    consumer = threading.Thread(target=lambda: next(chunks))
    consumer.start()
    assert inside.wait(10)
    assert not guard.acquire(blocking=False)  # a fork now would wait
    leave.set()
    consumer.join(10)
    assert guard.acquire(timeout=10)
    guard.release()
