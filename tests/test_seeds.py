"""The seeds' spread: records copied, mean and sample standard deviation, mixed recipes refused."""

import json
import statistics
import subprocess
import sys

from s10 import seeds
from tests.conftest import ROOT


def fake_run(folder, seed, acc, tta, label_smoothing=0.2):
    folder.mkdir(parents=True)
    recipe = {"epochs": 24, "label_smoothing": label_smoothing, "seed": seed, "max_lr": 2.3e-3 + seed * 1e-5}
    (folder / "config.json").write_text(json.dumps({"recipe": recipe, "args": {"precision": "bf16-mixed"},
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
    for runs, message in (([a, b], "label_smoothing differ"), ([a, c], "not a finished run folder"),
                          ([a], "at least two")):
        proc = subprocess.run([sys.executable, "-m", "s10.seeds", *map(str, runs), "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert seeds.lines(seeds.summarize([a, fake_run(tmp_path / "d", 2, 0.96, 0.965)]))[-1].startswith("| **mean")
