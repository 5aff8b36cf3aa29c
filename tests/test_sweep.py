import json

import pandas as pd
import pytest

from notebook_factory import write_notebook
from persam_lib.book.sweep import SweepError, load_sweep, point_dir, results_table, run_sweep
from persam_lib.cli import main


@pytest.fixture
def project(tmp_path):
    write_notebook(tmp_path / "toy.ipynb")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "notebooks.yaml").write_text("notebooks:\n  - name: toy\n    source: toy.ipynb\n")
    return tmp_path


def _sweep(project, text):
    path = project / "sweep.yaml"
    path.write_text(text)
    return path


def test_grid_and_points_expand_with_shared_parameters(project):
    path = _sweep(project, "name: s\nparameters: {scale: 2}\nnotebooks:\n  - notebook: toy\n    grid: {x: [1, 2], label: [a, b]}\n  - notebook: toy.ipynb\n    points: [{x: 5}]\n")
    sweep = load_sweep(path, project)
    assert sweep.name == "s" and sweep.out == (project / "runs").resolve()
    params = [p.parameters for p in sweep.points]
    assert params[:4] == [{"scale": 2, "x": 1, "label": "a"}, {"scale": 2, "x": 1, "label": "b"}, {"scale": 2, "x": 2, "label": "a"}, {"scale": 2, "x": 2, "label": "b"}]
    assert params[4] == {"scale": 2, "x": 5} and sweep.points[4].notebook == "toy.ipynb"
    assert len({p.key for p in sweep.points}) == 5  # a folder per point


def test_every_problem_is_reported_with_its_line_before_anything_runs(project):
    path = _sweep(project, "\n".join([
        "name: bad",               # 1
        "colour: blue",            # 2 unknown key
        "notebooks:",              # 3
        "  - notebook: nope",      # 4 unknown notebook
        "  - notebook: toy",       # 5
        "    grid:",               # 6
        "      x: [1, ten]",       # 7 wrong type
        "      epoch: [3]",        # 8 unknown parameter (line of the grid)
        "  - notebook: toy",       # 9
        "    points: [{output_dir: /tmp}]",  # 10 the runner's parameter
        "  - notebook: toy",       # 11
        "    parameters: {fail: maybe}",     # 12 wrong type
    ]))
    with pytest.raises(SweepError) as caught:
        load_sweep(path, project)
    text = str(caught.value)
    assert f"{path}, line 2: unknown key 'colour'" in text
    assert f"{path}, line 4: unknown notebook 'nope'" in text and "['toy']" in text
    assert "line 7: notebook 'toy': parameter 'x' must be an int (its default is 1), got 'ten'" in text
    assert "line 7: notebook 'toy' has no parameter 'epoch'; its parameters are ['fail', 'label', 'scale', 'x']" in text
    assert "line 10: 'output_dir' is set by the sweep runner" in text
    assert "line 12: notebook 'toy': parameter 'fail' must be true or false" in text
    assert not (project / "runs").exists()
    with pytest.raises(SweepError, match="not valid YAML"):
        load_sweep(_sweep(project, "notebooks: [\n"), project)
    with pytest.raises(SweepError, match="either 'grid:' or 'points:'"):
        load_sweep(_sweep(project, "notebooks:\n  - notebook: toy\n    grid: {x: [1]}\n    points: [{x: 2}]\n"), project)


def test_points_run_fail_alone_and_a_rerun_resumes(project, tmp_path):
    path = _sweep(project, "notebooks:\n  - notebook: toy\n    points: [{x: 1}, {x: 2, fail: true}, {x: 3}]\n")
    sweep = load_sweep(path, project)
    report = run_sweep(sweep, tmp_path / "work", cwd=project, progress=False)
    assert [o.status for o in report.outcomes] == ["done", "failed", "done"]
    assert "1 failed" in report.line() and "ValueError at In [4]" in report.line()  # parameters, injected parameters, import, the failing cell
    ok, bad = point_dir(sweep.out, sweep.points[0]), point_dir(sweep.out, sweep.points[1])
    saved = json.loads((ok / "parameters.json").read_text())
    assert saved["parameters"] == {"x": 1} and saved["output_dir"] == str(ok) and saved["work_dir"] == str((tmp_path / "work").resolve())
    assert json.loads((ok / "results.json").read_text())["results"] == {"double": 2.0, "label": "a"}
    failure = json.loads((bad / "failure.json").read_text())
    assert failure["execution_count"] == 4 and failure["ename"] == "ValueError" and "asked to fail" in failure["evalue"] and "raise ValueError" in failure["source"]
    assert (bad / "notebook.failed.ipynb").is_file() and not (bad / "results.json").exists()
    table = pd.read_csv(report.table)
    assert set(table.columns) >= {"notebook", "point", "x", "result", "value"} and len(table) == 4  # 2 points x 2 results
    stamp = (ok / "results.json").stat().st_mtime_ns
    again = run_sweep(sweep, tmp_path / "work", cwd=project, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped", "failed"]  # finished points are kept, the failed one retried
    assert (ok / "results.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="computed on the work dir"):  # finished points are reused only on the same inputs
        run_sweep(sweep, tmp_path / "other_work", cwd=project, progress=False)


def test_parallel_workers_and_the_command(project, tmp_path, capsys):
    path = _sweep(project, "out: elsewhere\nnotebooks:\n  - notebook: toy\n    grid: {x: [1, 2, 3]}\n")
    assert main(["sweep", str(path), "--work", str(tmp_path / "w"), "--workers", "2", "--project", str(project)]) == 0
    assert "3 done" in capsys.readouterr().out
    table = results_table(load_sweep(path, project))
    assert sorted(table[table.result == "double"]["value"].astype(float)) == [2.0, 4.0, 6.0]
    assert main(["sweep", str(_sweep(project, "notebooks:\n  - notebook: toy\n    grid: {y: [1]}\n")), "--project", str(project)]) == 2
    assert "has no parameter 'y'" in capsys.readouterr().err


def test_points_run_as_tasks_on_a_dask_cluster(project, tmp_path):
    from dask.distributed import LocalCluster

    sweep = load_sweep(_sweep(project, "notebooks:\n  - notebook: toy\n    points: [{x: 4}, {x: 5, fail: true}]\n"), project)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        report = run_sweep(sweep, tmp_path / "work", scheduler=cluster.scheduler_address, cwd=project, progress=False)
    assert sorted(o.status for o in report.outcomes) == ["done", "failed"]
    assert json.loads((point_dir(sweep.out, sweep.points[0]) / "results.json").read_text())["results"]["double"] == 8.0
    assert (point_dir(sweep.out, sweep.points[1]) / "failure.json").is_file()
