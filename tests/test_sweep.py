"""`batchrun sweep`: a mistake in a sweep file (or a file it names) is reported before any
cell runs (exit 2), naming the sweep file, the table and the key as the user wrote them."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrun.testing import MockServer

from .conftest import REPO, prompts, run_cli, write_jsonl

pytestmark = pytest.mark.slow

HEAD = 'output_dir = "out"\ndatasets = ["d.jsonl"]\n'


def sweep_in(folder: Path, text: str, name: str = "s12.toml") -> Path:
    """A sweep file over a two-row dataset next to it."""
    write_jsonl(folder / "d.jsonl", prompts(2))
    path = folder / name
    path.write_text(text)
    return path


def nothing_ran(server: MockServer, folder: Path) -> None:
    assert server.stats()["submissions"] == 0
    assert not (folder / "out").exists()  # no cell started, no summary written


def refused_before_any_cell(
    mock_server: MockServer, tmp_path: Path, path: Path, message: str
) -> None:
    """The sweep exits 2 with exactly `message` (its {sweep} and {folder} filled), and no
    cell ran."""
    result = run_cli("sweep", str(path), "--base-url", mock_server.base_url)
    assert result.returncode == 2, result.stderr
    expected = message.format(sweep=path, folder=tmp_path)
    assert result.stderr == f"batchrun: error: {expected}\n"
    nothing_ran(mock_server, tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HEAD + '[grid]\nmax_tokens = [1, "x"]\n',
         "{sweep}: [grid] max_tokens must be a whole number, got 'x'"),
        (HEAD + '[run.params]\ntop_p = "high"\n',
         "{sweep}: [run.params] top_p must be a number, got 'high'"),
        (HEAD + "[run]\nrpn = 5\n", "{sweep}: unknown key 'rpn' in [run] (did you mean 'rpm'?)"),
        (HEAD + 'modles = ["m/a"]\n',
         "{sweep}: unknown sweep key 'modles' (did you mean 'models'?)"),
        (HEAD + "rpm = 5\n", "{sweep}: unknown sweep key 'rpm' (a run setting: put it under "
         "[run], or list its values under [grid])"),
        (HEAD + 'config = "nope.toml"\n', "{sweep}: config = 'nope.toml': {folder}/nope.toml "
         "not found (paths in a sweep file are relative to it)"),
        (HEAD + 'config = "job.toml"\n', "{folder}/job.toml: [params] top_p must be a number, "
         "got 'high'"),
    ],
)  # fmt: skip
def test_a_sweep_file_mistake_names_the_file_table_and_key(
    mock_server: MockServer, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "job.toml").write_text('[params]\ntop_p = "high"\n')  # a base config's mistake
    path = sweep_in(tmp_path, text)
    refused_before_any_cell(mock_server, tmp_path, path, message)


def test_a_typo_in_run_params_is_named_with_the_nvidia_config(tmp_path: Path) -> None:
    """The NVIDIA endpoint refuses unknown fields: a typo under [run.params] is named with
    the sweep file and the suggestion. (No key is set: nothing could be sent anyway.)"""
    nvidia = REPO / "configs/nvidia.toml"
    path = sweep_in(tmp_path, HEAD + f'config = "{nvidia}"\n[run.params]\nmax_tokns = 64\n')
    result = run_cli("sweep", str(path))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"batchrun: error: {path}: [run.params] max_tokns is not a field of this endpoint's "
        "requests; did you mean 'max_tokens'?\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('output_dir = "out"\ndatasets = ["d.jsonl", "nope.jsonl"]\n',
         "{sweep}: datasets: 'nope.jsonl': {folder}/nope.jsonl not found (paths in a sweep "
         "file are relative to it)"),
        ('output_dir = "out"\ndatasets = ["d.jsonl", "job.toml"]\n',
         "{sweep}: datasets: 'job.toml': {folder}/job.toml: unsupported input type (expected "
         ".jsonl, .jsonl.gz, .ndjson, .parquet, .csv, .csv.gz, .tsv, .tsv.gz, .arrow, .feather, "
         ".ipc)"),
        (HEAD + '[run]\nreuse = "old.parquet"\n',
         "{sweep}: [run] reuse: no such checkpoint or output file: {folder}/old.parquet"),
    ],
)  # fmt: skip
def test_a_missing_dataset_stops_the_sweep_before_any_cell_runs(
    mock_server: MockServer, tmp_path: Path, text: str, message: str
) -> None:
    """Every file the sweep reads is checked when the sweep file is read: the first cell
    (over d.jsonl, which exists) does not run, and the exit is 2 (a config error), not 1."""
    (tmp_path / "job.toml").write_text("rpm = 5\n")
    path = sweep_in(tmp_path, text)
    refused_before_any_cell(mock_server, tmp_path, path, message)


def test_a_cells_checkpoint_mismatch_suggests_what_the_sweep_can_do(
    mock_server: MockServer, fast_config: Path, tmp_path: Path
) -> None:
    """The run's hint (`--fresh --reuse OUTPUT`) names a flag sweep does not have; a cell
    says what works from the sweep, and doing what it says keeps the paid answers."""
    text = HEAD + f'config = "{fast_config.name}"\n'
    path = sweep_in(tmp_path, text)
    data = write_jsonl(tmp_path / "d.jsonl", prompts(3))
    args = ["sweep", str(path), "--base-url", mock_server.base_url]
    run_cli(*args, check=True)
    assert mock_server.stats()["submissions"] == 3
    write_jsonl(data, prompts(4))  # the dataset grew: the cell's checkpoint is another job's
    result = run_cli(*args)
    assert result.returncode == 1
    assert "--reuse" not in result.stderr
    assert (
        "Run the sweep with its original inputs and settings to resume this cell, or run "
        f"batchrun sweep {path} --fresh to start over: --fresh restarts every cell of the "
        "sweep, not only this one (this cell's 3 finished rows are discarded). To keep the "
        'answers whose request did not change, add reuse = "out/d-default/results.parquet" '
        f"under [run] in {path} before running it with --fresh:"
    ) in result.stderr
    assert mock_server.stats()["submissions"] == 3
    path.write_text(text + '[run]\nreuse = "out/d-default/results.parquet"\n')
    result = run_cli(*args, "--fresh")
    assert result.returncode == 0, result.stderr
    assert mock_server.stats()["submissions"] == 4  # only the new row was bought
