"""One safe YAML loader: every YAML file we read gives a one-line error with file and line, never a
traceback, and nothing in it is ever constructed beyond plain data."""
import subprocess
import sys
from pathlib import Path

import pytest

from persam_lib.cli import main
from persam_lib.io.yaml_files import YamlFileError, compose_yaml, load_yaml, node_value

PERSAM = str(Path(sys.executable).parent / "persam")
UNSAFE = "!!python/object/apply:os.system ['touch {marker}']"


def test_plain_yaml_loads_and_an_empty_file_is_none(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("\ufeffa: 1\nb: [x, y]\n")  # a byte-order mark is not part of the content
    assert load_yaml(path) == {"a": 1, "b": ["x", "y"]}
    path.write_text("")
    assert load_yaml(path) is None


def test_syntax_errors_and_unsafe_tags_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(YamlFileError, match=rf"^{path}, line \d: is not valid YAML \(.*\)\. Fix the YAML syntax at that line\.$"):
        load_yaml(path, "sweep file")
    marker = tmp_path / "pwned"
    path.write_text("a: 1\nb:\n  c: " + UNSAFE.format(marker=marker) + "\n")
    with pytest.raises(YamlFileError) as err:
        load_yaml(path, "manifest")
    assert str(err.value).startswith(f"{path}, line 3: uses a YAML tag that is not plain data (tag:yaml.org,2002:python/object/apply:os.system)")
    assert "A manifest holds only plain values" in str(err.value) and not marker.exists()


def test_node_values_keep_the_files_own_line_numbers(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\npoints:\n  - {x: 1}\n  - {x: !!python/name:os.system }\n")
    root = compose_yaml(path, "sweep file")
    points = dict((k.value, v) for k, v in root.value)["points"]
    assert node_value(points.value[0], path) == {"x": 1}
    with pytest.raises(YamlFileError, match=rf"^{path}, line 4: uses a YAML tag"):
        node_value(points.value[1], path, "sweep file")


def test_missing_directory_and_non_utf8_files_say_so(tmp_path):
    with pytest.raises(YamlFileError, match="the configuration file does not exist"):
        load_yaml(tmp_path / "nope.yaml", "configuration file")
    with pytest.raises(YamlFileError, match="is a directory, not a configuration file"):
        load_yaml(tmp_path, "configuration file")
    path = tmp_path / "latin1.yaml"
    path.write_bytes("site: Hôpital\n".encode("latin-1"))
    with pytest.raises(YamlFileError, match="is not UTF-8 text"):
        load_yaml(path)


def test_config_file_with_an_unsafe_tag_is_exit_2_from_the_installed_command(tiny_cohort, tmp_path):
    marker = tmp_path / "pwned"
    config = tmp_path / "train.yaml"
    config.write_text("lr: 0.001\nepochs: " + UNSAFE.format(marker=marker) + "\n")
    result = subprocess.run([PERSAM, "train", str(tiny_cohort.manifest_path), "--out", str(tmp_path / "run"), "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"persam train: error: {config}, line 2: uses a YAML tag that is not plain data (tag:yaml.org,2002:python/object/apply:os.system). A configuration file holds only plain values, lists and mappings; remove the tag."]
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_broken_truth_file_stops_explain_with_its_line(tiny_run, cohort_copy, tmp_path, capsys):
    truth = cohort_copy / "truth" / "truth.yaml"
    truth.write_text(truth.read_text() + "extra: [unclosed\n")
    code = main(["explain", str(tiny_run.path), "--manifest", str(cohort_copy / "manifest.yaml"), "--out", str(tmp_path / "a.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"persam explain: error: {truth}, line ") and "is not valid YAML" in err[0]
    assert not (tmp_path / "a.csv").exists()
