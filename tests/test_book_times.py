"""`persam book` runs chapters that do not wait on each other at once (``after:`` in
``book/notebooks.yaml``) and records what each chapter and stage cost (``_build/book_times.json``)."""
import json
import os
from pathlib import Path

import pytest
import yaml

from persam_lib.book.build import BookReport, _kernel_threads, execute_notebooks, read_notebook_specs
from tests.notebook_factory import write_notebook


def test_the_report_totals_the_chapters_wall_clock_and_the_stages():
    report = BookReport(executed={"cohort": 5.04, "training": 120.46}, stages={"html": 30.0, "browser check": 9.96}, chapters_s=100.04)
    assert report.times() == {"chapters": {"cohort": 5.0, "training": 120.5}, "stages": {"html": 30.0, "browser check": 10.0}, "chapters_s": 100.0, "total_s": 140.0}
    one_after_another = BookReport(executed={"cohort": 5.0, "training": 120.0}, stages={"html": 30.0})
    assert one_after_another.times()["total_s"] == 155.0


# Each chapter records when it started and ended (and the threads its kernel was given), then
# checks that what the chapters it runs after wrote is there.
STAMP = """
import json, os, time
from pathlib import Path
stamps = Path(work_dir) / "stamps"
stamps.mkdir(parents=True, exist_ok=True)
name, _, needs = label.partition(":")
for needed in needs.split("+") if needs else []:
    assert (stamps / f"{needed}.json").is_file(), f"{needed} has not finished"
began = time.time()
time.sleep(x)
(stamps / f"{name}.json").write_text(json.dumps({"began": began, "ended": time.time(), "threads": os.environ.get("OMP_NUM_THREADS")}))
"""


def _project(tmp_path: Path, entries: list[dict]) -> Path:
    (tmp_path / "book").mkdir()
    write_notebook(tmp_path / "chapter.ipynb", STAMP)
    notebooks = []
    for entry in entries:  # x: seconds asleep; label: "name:" and the "+"-joined chapters it must find finished
        notebooks.append({"name": entry["name"], "source": "chapter.ipynb", "parameters": {"x": entry.get("sleep", 0), "label": f"{entry['name']}:{entry.get('needs', '')}", "fail": entry.get("fail", False)}}
                         | ({"after": entry["after"]} if "after" in entry else {}))
    (tmp_path / "book" / "notebooks.yaml").write_text(yaml.safe_dump({"notebooks": notebooks}))
    return tmp_path


def _stamps(project: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (project / "_work" / "stamps").glob("*.json")}


def test_chapters_that_do_not_wait_on_each_other_run_at_once_and_the_rest_in_order(tmp_path, monkeypatch):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    project = _project(tmp_path, [
        {"name": "first", "sleep": 8},
        {"name": "alone", "sleep": 2, "after": []},  # reads nothing above: runs beside "first"
        {"name": "last", "needs": "first+alone"},  # no `after`: after every chapter above it, so not in the slot "alone" frees
    ])
    report = execute_notebooks(project, project / "_work", jobs=2)
    assert set(report.executed) == {"first", "alone", "last"}, report.failed
    stamps = _stamps(project)
    assert stamps["alone"]["began"] < stamps["first"]["ended"] and stamps["first"]["began"] < stamps["alone"]["ended"]  # overlapped
    assert stamps["last"]["began"] >= max(stamps["first"]["ended"], stamps["alone"]["ended"])
    assert report.chapters_s < sum(report.executed.values())  # wall clock, not the sum
    assert stamps["first"]["threads"] == str(max(1, os.cpu_count() // 2))  # the kernels share the cores
    assert "OMP_NUM_THREADS" not in os.environ  # given back


def test_one_job_runs_the_chapters_one_after_another_and_a_failure_stops_none(tmp_path):
    project = _project(tmp_path, [{"name": "broken", "fail": True}, {"name": "first"}, {"name": "alone", "sleep": 1, "after": []}])
    report = execute_notebooks(project, project / "_work", jobs=1)
    stamps = _stamps(project)
    assert list(report.executed) == ["first", "alone"] and set(report.failed) == {"broken"}
    assert stamps["alone"]["began"] >= stamps["first"]["ended"]


def test_after_must_name_chapters_above(tmp_path):
    project = _project(tmp_path, [{"name": "first", "after": ["later"]}, {"name": "later"}])
    with pytest.raises(ValueError, match=r"notebooks.yaml: notebook entry 1 \('first'\): 'after' must list chapters above it"):
        read_notebook_specs(project)


def test_the_users_thread_settings_are_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with _kernel_threads(2):
        assert os.environ["OMP_NUM_THREADS"] == "7"
    assert os.environ["OMP_NUM_THREADS"] == "7"


def test_the_books_chapters_wait_for_what_they_read():
    specs = {s.name: s for s in read_notebook_specs(Path(__file__).resolve().parents[1])}

    def upstream(name: str) -> set[str]:
        return {a for direct in specs[name].after for a in {direct} | upstream(direct)}

    assert specs["radiographs"].after == () and upstream("sweeps") == {"cohort", "features"}
    for name in ("attention", "attributions", "new_patients"):  # each reads the runs, which read the features of the cohort
        assert upstream(name) == {"cohort", "features", "training"}
    assert set(specs["reproducibility"].after) == set(specs) - {"reproducibility"}  # it reads every chapter's record
