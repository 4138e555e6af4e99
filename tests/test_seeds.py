"""The seeds' spread: records copied, mean and sample standard deviation, mixed recipes refused."""

import json
import statistics
import subprocess
import sys

from s10 import seeds
from tests.conftest import ROOT


DATA = {"source": ".data/cifar10", "classes": ["airplane", "cat"], "train_images": 50000, "test_images": 10000,
        "held_out_images": 0, "fingerprint": "0123456789abcdef"}


def same_data_as(run):
    """fake_run's keywords for a record of the data `run` was trained and tested on."""
    config = json.loads((run / "config.json").read_text())
    return {"args": {k: config["args"].get(k) for k in ("smoke", "train_limit", "test_limit", "holdout")},
            "data": config["data"], "test_images": json.loads((run / "results.json").read_text())["test_images"]}


def fake_run(folder, seed, acc, tta, label_smoothing=0.2, recipe=None, precision="bf16-mixed", max_lr=None,
             args=None, data=None, test_images=10000):
    """A finished run's record: its peak LR from its own range test (each seed's differs), or `max_lr` given."""
    folder.mkdir(parents=True)
    recipe = {**(recipe or {"epochs": 24, "label_smoothing": label_smoothing}), "seed": seed,
              "max_lr": max_lr or 2.3e-3 + seed * 1e-5}
    args = {"precision": precision, "find_lr": max_lr is None, **(args or {})}
    (folder / "config.json").write_text(json.dumps({"recipe": recipe, "args": args, "data": {**DATA, **(data or {})},
                                                    "hardware": {"cpu_threads": 2, "cpu": "Xeon", "gpu": None}}))
    held_out = {"val_acc": acc - 0.01} if (args or {}).get("holdout") else {}
    (folder / "results.json").write_text(json.dumps({"test_acc": acc, "test_acc_tta": tta, "train_time_s": 60,
                                                     "test_images": test_images, **held_out}))
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


def refused(runs, out, capsys) -> str:
    """`python -m s10.seeds RUNS --out OUT` in process (the command's own main): its exit code must be 2 and its
    message one line without a traceback; the message."""
    code = seeds.main([*map(str, runs), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def test_mixed_recipes_and_unfinished_runs_are_refused(tmp_path, capsys):
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
        assert message in refused(runs, tmp_path / "o", capsys)
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
    assert seeds.brief({**old, "label_smoothing": 0.0}) == ("Adam, L2 0.0001, no label smoothing, random flip, "
                                                          "peak LR from each seed's range test")


def test_the_aim_is_said_reached_only_at_its_mean_and_said_short_by_how_much(tmp_path):
    """The line under the seeds' table: the project's aim (94.50 % mean over 3 seeds) against the measured mean."""
    short = seeds.summarize([fake_run(tmp_path / f"a{k}", k, acc, 0.95) for k, acc in enumerate([0.9371, 0.9380,
                                                                                                   0.9362])])
    assert "**not reached**, 0.79 points short." in seeds.aim_line(short)
    reached = seeds.summarize([fake_run(tmp_path / f"b{k}", k, 0.9450 + k * 1e-4, 0.95) for k in range(2)])
    assert seeds.aim_line(reached).endswith("**reached** (so far: 2 of the 3 seeds).")


def test_runs_on_other_data_are_never_pooled(tmp_path, capsys):
    """The review's case and its parts: a seed trained on a subset, tested on a subset, a smoke run, another data
    set (fingerprint) or held-out split is refused by name; the same data read from another folder is pooled; a
    record from before the fingerprint is compared by its sizes."""
    a = fake_run(tmp_path / "a", 0, 0.94, 0.945)
    other = [
        (dict(args={"train_limit": 5000}, data={"train_images": 5000}), "--train-limit: 5000 against None"),
        (dict(args={"test_limit": 1000}, test_images=1000), "test images: 1000 against 10000"),
        (dict(args={"smoke": True}), "--smoke: True against False"),
        (dict(data={"fingerprint": "fedcba9876543210"}), "data fingerprint: fedcba9876543210 against"),
        (dict(args={"holdout": 5000}, data={"held_out_images": 5000, "train_images": 45000}), "--holdout: 5000"),
    ]
    for k, (change, message) in enumerate(other):
        b = fake_run(tmp_path / f"b{k}", 1, 0.99, 0.99, **change)
        error = refused([a, b], tmp_path / "o", capsys)
        assert "not trained and tested on the first run's data" in error and message in error, error
    moved = fake_run(tmp_path / "moved", 1, 0.94, 0.945, data={"source": "/root/s10-data/cifar10"})
    older = fake_run(tmp_path / "older", 2, 0.94, 0.945, data={"fingerprint": None})
    assert seeds.summarize([a, moved, older])["runs"] == 3


def test_recipes_compared_and_the_seeds_must_share_the_releases_data(tmp_path):
    """The report's "Recipes compared" and seeds' table say the runs share one data and test set: a record tested
    on a subset is refused there too, one of the same data is shown."""
    import pytest

    from s10 import report

    release = fake_run(tmp_path / "release", 0, 0.94, 0.945)
    seeds.record([fake_run(tmp_path / "c", 0, 0.93, 0.935, label_smoothing=0.1)], release / "recipes" / "course")
    assert [name for name, _ in report.recipes(release)] == ["course"]
    subset = fake_run(tmp_path / "s", 0, 0.99, 0.99, label_smoothing=0.1, args={"test_limit": 1000}, test_images=1000)
    seeds.record([subset], release / "recipes" / "subset")
    with pytest.raises(ValueError, match="recipes/subset was trained or tested on other data than the release"):
        report.recipes(release)


def test_a_screen_record_holds_the_held_out_accuracy(tmp_path, capsys):
    """Runs with --holdout: the record keeps each seed's val_acc and their mean, the figure recipes are chosen on,
    and recording them prints that figure, never the test set's; runs without it have none."""
    accs = [0.9301, 0.9342]
    held = {"args": {"holdout": 5000}, "data": {"held_out_images": 5000, "train_images": 45000}}
    runs = [fake_run(tmp_path / f"s{k}", k, a, a, **held) for k, a in enumerate(accs)]
    assert seeds.main([*map(str, runs), "--out", str(tmp_path / "screen")]) == 0
    printed = capsys.readouterr().out
    assert "| 0 | 2.30e-03 | 92.01 % |" in printed and "held-out accuracy" in printed
    assert "93.01 %" not in printed and "test accuracy" not in printed
    summary = seeds.summarize(runs)
    assert [s["val_acc"] for s in summary["seeds"]] == [a - 0.01 for a in accs]
    assert summary["val_acc"]["mean"] == statistics.fmean(a - 0.01 for a in accs)
    assert summary["data"]["--holdout"] == 5000
    plain = seeds.summarize([fake_run(tmp_path / "plain", 0, 0.94, 0.945)])
    assert "val_acc" not in plain and plain["seeds"][0]["val_acc"] is None


def test_the_screen_table_sets_each_option_against_page_of_its_length(tmp_path):
    """The screen's table (docs/training.md) from held-out records made by `python -m s10.seeds`: each row's flags on
    top of `page`, its held-out accuracy, its difference to `page` of the same length and whether the rule keeps it
    (a gain of more than twice the sampling error from the held-out count), where it ran. A record of the test set,
    or of other held-out images, is refused."""
    from dataclasses import asdict

    import pytest

    from s10.module import RECIPES, Recipe
    from s10.report import screen_gains, screen_table

    held = {"args": {"holdout": 5000}, "data": {"held_out_images": 5000, "train_images": 45000}}
    page = {k: v for k, v in asdict(Recipe(**RECIPES["page"]["values"])).items() if k not in ("seed", "max_lr")}
    arms = {"page-24": ({}, 0.9411), "tricks-24": ({"label_smoothing": 0.2, "ghost_batch": 32,
                                                   "alternating_flip": True}, 0.9452),
            "page-12": ({"epochs": 12}, 0.9301), "ghost-12": ({"epochs": 12, "ghost_batch": 32}, 0.9290),
            "big-24": ({"ema_decay": 0.99}, 0.9520)}
    screen = tmp_path / "release" / "screen"
    for name, (changes, acc) in arms.items():
        run = fake_run(tmp_path / "runs" / name, 0, acc + 0.01, acc + 0.012, recipe={**page, **changes}, max_lr=0.4,
                       **held)  # fake_run's val_acc is its test accuracy less 0.01: `acc`
        seeds.record([run], screen / name)
    table = screen_table(screen)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| page-12", "| ghost-12", "| page-24", "| big-24", "| tricks-24"]
    assert rows[0] == "| page-12 | (the baseline) | 12 | 0 | 93.01 % |  | 2 CPU cores (Xeon) |"
    assert rows[1] == ("| ghost-12 | `--ghost-batch 32` | 12 | 0 | 92.90 % | -0.11 points, not kept | "
                       "2 CPU cores (Xeon) |")
    assert rows[3].startswith("| big-24 | `--ema-decay 0.99` | 24 | 0 | 95.20 % | +1.09 points, kept |")
    assert rows[4].startswith("| tricks-24 | `--label-smoothing 0.2`, `--ghost-batch 32`, `--alternating-flip` | 24 | "
                              "0 | 94.52 % | +0.41 points, not kept |")
    mean = (0.9411 + 0.9452 + 0.9301 + 0.9290 + 0.9520) / 5
    error = (mean * (1 - mean) / 5000) ** 0.5
    assert f"alone is {100 * error:.2f} points" in table and f"more than twice that ({200 * error:.2f} points)" in table
    gains = screen_gains(screen)
    assert sorted(gains) == ["big-24", "ghost-12", "tricks-24"]
    assert [gains[n][1] for n in ("big-24", "ghost-12", "tricks-24")] == [True, False, False]
    assert gains["tricks-24"][0] == pytest.approx(0.9452 - 0.9411)
    assert "same 5,000 held-out training images" in table

    seeds.record([fake_run(tmp_path / "runs" / "other", 0, 0.95, 0.95, recipe=page, max_lr=0.4,
                           args={"holdout": 2000}, data={"held_out_images": 2000, "train_images": 48000})],
                 screen / "other")
    with pytest.raises(ValueError, match="not trained and measured on the data"):
        screen_table(screen)
    seeds.record([fake_run(tmp_path / "runs" / "test", 0, 0.95, 0.95, recipe=page, max_lr=0.4)], screen / "other")
    with pytest.raises(ValueError, match="no held-out accuracy"):
        screen_table(screen)


def test_a_recipe_with_a_published_figure_is_set_beside_it(tmp_path):
    """"Recipes compared": the `page` record beside Page's own published mean (s10.seeds.REFERENCES), with the
    difference in points; a recipe with no published figure gets no such line."""
    from dataclasses import asdict

    from s10.module import RECIPES, Recipe

    acc, runs, _ = seeds.REFERENCES["page"]
    values = asdict(Recipe(**RECIPES["page"]["values"]))
    page = seeds.summarize([fake_run(tmp_path / "p", 0, 0.9371, 0.9402, recipe=values, max_lr=0.4)])
    course = seeds.summarize([fake_run(tmp_path / "c", 0, 0.9367, 0.9435, label_smoothing=0.1)])
    lines = seeds.compare_lines([("course", course), ("page", page)])
    said = [line for line in lines if "as its author measured it" in line]
    assert len(said) == 1 and said[0].startswith(f"`page` as its author measured it: {100 * acc:.2f} % mean over "
                                                 f"{runs} runs")
    assert f"here 93.71 % over 1 seed, {100 * (0.9371 - acc):+.2f} points from it." in said[0]


def test_a_record_is_named_by_its_values_and_set_beside_its_authors_figure(tmp_path):
    """A recipe is the named recipe it equals value for value, its length and its peak LR's origin included (one
    flag changed, another length or a range test instead of the given LR: no name). "Recipes compared" sets a
    record that is `page` beside Page's published figure whatever its row's label, so the release's own row (its
    label "this release's recipe") gets it once the release is `page` over three seeds."""
    from dataclasses import asdict

    from s10.module import RECIPES, Recipe

    page = asdict(Recipe(**RECIPES["page"]["values"]))
    assert seeds.recipe_name((seeds.full_recipe(page), 0.4)) == "page"
    for other in ((seeds.full_recipe(page), seeds.RANGE_TEST), (seeds.full_recipe(page), 0.2),
                  (seeds.full_recipe({**page, "label_smoothing": 0.2}), 0.4),
                  (seeds.full_recipe({**page, "epochs": 12}), 0.4)):
        assert seeds.recipe_name(other) is None
    course = asdict(Recipe(**RECIPES["course"]["values"]))
    assert seeds.recipe_name((seeds.full_recipe(course), seeds.RANGE_TEST)) == "course"
    runs = [fake_run(tmp_path / f"s{k}", k, acc, acc + 0.003, recipe=page, max_lr=0.4)
            for k, acc in enumerate([0.9412, 0.9430, 0.9406])]
    lines = seeds.compare_lines([("this release's recipe (`page`)", seeds.summarize(runs))])
    assert lines[2].startswith("| this release's recipe (`page`) | SGD Nesterov 0.9, L2 0.0005, linear schedule")
    assert lines[-1].startswith("`page` as its author measured it: 94.00 % mean over 50 runs")
    assert lines[-1].endswith("here 94.16 % +- 0.12 over 3 seeds, +0.16 points from it.")
