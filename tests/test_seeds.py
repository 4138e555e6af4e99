"""The seeds' spread: records copied, mean and sample standard deviation, mixed recipes refused."""

import json
import statistics
import subprocess
import sys

from s10 import seeds
from tests.conftest import ROOT


def fake_run(folder, seed, acc, tta, label_smoothing=0.2, recipe=None, precision="bf16-mixed", max_lr=None):
    """A finished run's record: its peak LR from its own range test (each seed's differs), or `max_lr` given."""
    folder.mkdir(parents=True)
    recipe = {**(recipe or {"epochs": 24, "label_smoothing": label_smoothing}), "seed": seed,
              "max_lr": max_lr or 2.3e-3 + seed * 1e-5}
    args = {"precision": precision, "find_lr": max_lr is None}
    (folder / "config.json").write_text(json.dumps({"recipe": recipe, "args": args,
                                                    "hardware": {"cpu_threads": 2, "cpu": "Xeon", "gpu": None}}))
    (folder / "results.json").write_text(json.dumps({"test_acc": acc, "test_acc_tta": tta, "train_time_s": 60}))
    (folder / "metrics.csv").write_text("epoch\n1\n")
    (folder / "checkpoints").mkdir()
    return folder


def test_summary_is_mean_and_sample_sd_and_copies_only_the_record(tmp_path):
    accs, ttas = [0.9401, 0.9432, 0.9388], [0.9466, 0.9490, 0.9451]
    runs = [fake_run(tmp_path / f"s{k}", k, a, t) for k, (a, t) in enumerate(zip(accs, ttas))]
    out = tmp_path / "record"
    proc = subprocess.run([sys.executable, "-m", "s10.seeds", *map(str, runs), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"]["mean"] == statistics.fmean(accs)
    assert summary["test_acc"]["sd"] == statistics.stdev(accs)
    assert summary["test_acc_tta"]["sd"] == statistics.stdev(ttas)
    assert sorted(p.name for p in (out / "seed1").iterdir()) == ["config.json", "metrics.csv", "results.json"]
    assert "mean +- sd over 3 seeds" in proc.stdout and "94.07 % +- 0.23" in proc.stdout


def test_mixed_recipes_and_unfinished_runs_are_refused(tmp_path):
    a = fake_run(tmp_path / "a", 0, 0.94, 0.945)
    b = fake_run(tmp_path / "b", 1, 0.94, 0.945, label_smoothing=0.1)
    c = tmp_path / "c"
    c.mkdir()
    given = fake_run(tmp_path / "g", 1, 0.94, 0.945, max_lr=3e-3)  # the same recipe but a peak LR given, not found
    for runs, message in (([a, b], "label_smoothing differ"), ([a, c], "not a finished run folder"),
                          ([a, fake_run(tmp_path / "a1", 0, 0.95, 0.955)], "same seed"),
                          ([a, given], "peak LR: 0.003 against range test differ"),
                          ([given, fake_run(tmp_path / "g2", 2, 0.94, 0.945, max_lr=2e-3)],
                           "peak LR: 0.002 against 0.003 differ")):
        proc = subprocess.run([sys.executable, "-m", "s10.seeds", *map(str, runs), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert seeds.lines(seeds.summarize([a, fake_run(tmp_path / "d", 2, 0.96, 0.965)]))[-1].startswith("| **mean")


def test_one_run_is_a_record_without_a_spread(tmp_path):
    """An earlier release's recipe kept beside the new one: one seed, its figures, no sd and no mean row."""
    summary = seeds.record([fake_run(tmp_path / "course", 0, 0.9367, 0.9435, label_smoothing=0.1)], tmp_path / "o")
    assert summary["runs"] == 1 and summary["test_acc"] == {"mean": 0.9367, "sd": None}
    assert seeds.lines(summary) == ["| seed | peak LR | test accuracy | flip TTA |", "|---:|---:|---:|---:|",
                                    "| 0 | 2.30e-03 | 93.67 % | 94.35 % |"]
    assert seeds.spread_text(summary["test_acc"]) == "93.67 %"


def test_a_record_from_before_a_recipe_field_existed_ran_as_its_default():
    """The course release's config.json predates the EMA and flip fields: it ran without them, and equals a new run
    that sets them to their defaults, not to the candidate's."""
    old = {"epochs": 24, "label_smoothing": 0.1, "seed": 0, "max_lr": 2.31e-3}
    assert seeds.full_recipe(old) == seeds.full_recipe({**old, "ema_decay": 0.0, "alternating_flip": False,
                                                        "optimizer": "adam", "seed": 3})
    assert seeds.full_recipe(old) != seeds.full_recipe({**old, "ema_decay": 0.99})
    assert seeds.brief(old) == "Adam, L2 0.0001, label smoothing 0.1, random flip, peak LR from each seed's range test"
    assert seeds.brief(old, 3.054e-3) == ("Adam, L2 0.0001, label smoothing 0.1, random flip, "
                                          "peak LR 3.05e-03 given (no range test)")
    assert seeds.brief({**old, "label_smoothing": 0.2, "ema_decay": 0.99, "alternating_flip": True}) == (
        "Adam, L2 0.0001, label smoothing 0.2, weight average 0.99 every 5 steps, alternating flip, "
        "peak LR from each seed's range test")


def test_the_aim_is_said_reached_only_at_its_mean_and_said_short_by_how_much(tmp_path):
    """The line under the seeds' table: the project's aim (94.50 % mean over 3 seeds) against the measured mean."""
    short = seeds.summarize([fake_run(tmp_path / f"a{k}", k, acc, 0.95) for k, acc in enumerate([0.9371, 0.9380,
                                                                                                   0.9362])])
    assert "**not reached**, 0.79 points short." in seeds.aim_line(short)
    reached = seeds.summarize([fake_run(tmp_path / f"b{k}", k, 0.9450 + k * 1e-4, 0.95) for k in range(2)])
    assert seeds.aim_line(reached).endswith("**reached** (so far: 2 of the 3 seeds).")
