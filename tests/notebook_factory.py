"""A tiny parameterised notebook for testing the runners (sweeps, reproduce, records) without the book's chapters."""
from pathlib import Path

import nbformat


def write_notebook(path: Path, body: str = "") -> Path:
    """A notebook with parameters work_dir, output_dir, x (int), scale (float), fail (bool), label (str);
    it publishes ``double`` = 2·x·scale (tolerance 0.0) and ``label``, and fails when asked."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}, "language_info": {"name": "python"}}
    parameters = nbformat.v4.new_code_cell('work_dir = ""\noutput_dir = ""\nx = 1\nscale = 1.0\nfail = False\nlabel = "a"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A test notebook"),
        parameters,
        nbformat.v4.new_code_cell("from persam_lib.book.results import publish_results\n" + body),
        nbformat.v4.new_code_cell('if fail:\n    raise ValueError("asked to fail")\npublish_results({"double": 2 * x * scale, "label": label}, tolerances={"double": 0.0})'),
        nbformat.v4.new_code_cell("from persam_lib.book.provenance import show_provenance\nshow_provenance();"),
    ]
    for i, cell in enumerate(nb.cells):
        cell.id = f"test-{i}"
    nbformat.write(nb, path)
    return path
