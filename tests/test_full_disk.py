"""A full disk, as the kernel reports it (a small tmpfs, ``_mounts``): a checkpoint that cannot be
written and a search whose study storage fills up each end in one line that names the path and
says how to go on; nothing already saved is lost, and the search continues with ``--resume`` once
there is space again."""

from __future__ import annotations

from pathlib import Path

import optuna
from _effml_cli import run_effml
from _mounts import fill, small_disk
from test_search_run import _config

from effml.search.study.storage import load_study

ROOT = Path(__file__).resolve().parents[1]
State = optuna.trial.TrialState


def _one_line_error(proc, *needles: str) -> None:
    """Exit 2 and, after any progress lines, one last line 'error: ...' that holds every needle."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and lines[-1].startswith("error:"), proc.stderr[-3000:]
    assert all(n in lines[-1] for n in needles) and sum("error" in line for line in lines) == 1, proc.stderr


def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    # 300 KiB: the run's config and metrics fit, the 0.66M-parameter model's checkpoint does not
    with small_disk(tmp_path / "disk", "300k") as disk:
        run = disk / "run"
        proc = run_effml(["train", ROOT / "configs" / "digits.yaml", "train.epochs=1", "train.max_steps=2",
                          "train.threads=1", f"run.dir={run}"], cwd=tmp_path)
        _one_line_error(proc, f"cannot write {run / 'checkpoints' / 'last.pt'}", "the disk is full")
        assert not list(run.rglob("*.tmp")), "a partial checkpoint was left behind"
        assert (run / "config.yaml").is_file()  # what was saved before stays


def test_a_search_whose_storage_fills_up_stops_in_one_line_and_resumes(tmp_path):
    with small_disk(tmp_path / "disk", "20m") as disk:
        storage = disk / "search.db"
        config = _config(tmp_path, trials=1, workers=1, storage=str(storage))
        assert run_effml(["search", config], cwd=tmp_path).returncode == 0
        before = {t.number: t.values for t in load_study(str(storage), "tiny").trials}
        filler = fill(disk)
        proc = run_effml(["search", config, "search.trials=2", "--resume"], cwd=tmp_path)
        _one_line_error(proc, f"sqlite:///{storage}", f"the disk of {disk} is full", "--resume")
        filler.unlink()
        proc = run_effml(["search", config, "search.trials=2", "--resume"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = load_study(str(storage), "tiny")
        assert len(study.get_trials(states=(State.COMPLETE,))) == 2
        assert all(study.trials[n].values == v for n, v in before.items())  # nothing it held was lost
