"""LR range test, end-of-run evaluation, the run's files and the README report."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import torch

from s10 import plots
from s10.data import load_dataset
from s10.inference import load_misclassified
from s10.lr_finder import lr_range_test
from s10.model import S10Net
from s10.module import Recipe
from tests.conftest import ROOT, make_tree, train_here

# `make test` runs two xdist workers (--dist loadgroup): this module's tests share one worker, so its module-scoped
# fixtures (servers, runs) are made once.
pytestmark = pytest.mark.xdist_group("report")


def least_squares(n=512, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def test_lr_range_test_finds_the_stable_region_and_restores_the_model():
    """Full-batch gradient descent on least squares diverges for LR > 2 / (largest Hessian eigenvalue):
    a known critical LR. The suggestion must sit below it, within two decades."""
    x, y = least_squares()
    critical = 2 / torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max().item()
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.123, momentum=0.0)
    result = lr_range_test(lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1]), model, optimizer,
                           [(x, y)], start_lr=1e-5, end_lr=100, num_steps=120)
    assert result.diverged_at is not None and critical < result.diverged_at < 10 * critical
    assert critical / 100 < result.suggestion < critical
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert optimizer.param_groups[0]["lr"] == 0.123 and not optimizer.state
    assert all(p.grad is None for p in model.parameters())


def test_lr_range_test_restores_adam_state():
    x, y = least_squares()
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer.step()  # an optimizer with state, as mid-training
    state = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items() if torch.is_tensor(v)}
    lr_range_test(lambda b: torch.nn.functional.mse_loss(model(b[0]), b[1]), model, optimizer, [(x, y)],
                  num_steps=20)
    for k, v in optimizer.state_dict()["state"][0].items():
        if torch.is_tensor(v):
            assert torch.equal(v, state[k]), k


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A smoke run with --find-lr on a noise data set (many mistakes to show)."""
    root = tmp_path_factory.mktemp("report")
    data = make_tree(root / "data", n_train=24, n_test=9, learnable=False)  # 27 test images, all used
    run = root / "run"
    train_here("--data", data, "--out", run, "--smoke", "--batch-size", 16, "--epochs", 2, "--find-lr",
               "--lr-find-steps", 12, "--no-progress-bar")
    return run, data


def test_find_lr_run_writes_every_file(finished_run):
    run, _ = finished_run
    for name in ["config.json", "metrics.csv", "train.log", "checkpoints/last.ckpt", "curves.png",
                 "misclassified.png", "confusion_matrix.png", "per_class.csv", "results.json", "lr_finder.csv",
                 "lr_finder.png", "model/model.safetensors", "model/config.json", "model/misclassified.json",
                 "model/misclassified.safetensors"]:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    with open(run / "lr_finder.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) >= 5
    config = json.loads((run / "config.json").read_text())
    assert "LR range test" in (run / "train.log").read_text()
    assert config["recipe"]["max_lr"] != Recipe().max_lr  # the suggestion replaced the default
    assert (run / "model" / "misclassified.safetensors").stat().st_size < 1_000_000


def test_results_recomputed_from_the_saved_model(finished_run):
    run, data = finished_run
    results = json.loads((run / "results.json").read_text())
    model = S10Net.from_pretrained(run / "model")
    test = load_dataset(str(data)).test
    x = model.normalize(test.images)  # its own forward pass, not the evaluation code's
    with torch.no_grad():
        plain, mirrored = model(x), model(x.flip(-1))
    for logits, key in ((plain, "test_acc"), ((plain + mirrored) / 2, "test_acc_tta")):
        pred = logits.argmax(-1)
        assert results[key] == pytest.approx((pred == test.labels).float().mean().item(), abs=1e-6)
    pred = plain.argmax(-1)
    for k, name in enumerate(model.config.class_names):
        own = (pred[test.labels == k] == k).float().mean().item()
        assert results["per_class_acc"][name] == pytest.approx(own, abs=1e-6)
    assert sum(map(sum, results["confusion_matrix"])) == len(test)
    assert model.config.results["test_acc"] == results["test_acc"]


def test_misclassified_pack_and_grid(finished_run):
    run, data = finished_run
    images, index = load_misclassified(run / "model")
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32) and len(images) == len(index) >= 10
    test = load_dataset(str(data)).test
    confidences = [e["confidence"] for e in index]
    assert confidences == sorted(confidences, reverse=True)
    for img, entry in zip(images, index):
        assert torch.equal(img, test.images[entry["test_index"]])
        assert entry["true"] != entry["pred"]
    # The grid in the run folder is exactly these 10 images with these captions (deterministic PNG bytes).
    captions = [plots.caption(e["true"], e["pred"], e["confidence"]) for e in index[:10]]
    again = run / "grid-again.png"
    plots.misclassified_grid(images[:10], captions, again)
    assert again.read_bytes() == (run / "misclassified.png").read_bytes()


def test_grid_draws_ten_captioned_images(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
    captions = [plots.caption("cat", "dog", 0.5 + i / 100) for i in range(10)]
    plots.misclassified_grid(images, captions, tmp_path / "x.png")
    titled = [ax.get_title() for ax in figures[0].axes if ax.images]
    assert titled == captions and captions[0] == "true: cat / pred: dog (0.50)"


def test_the_curves_name_the_runs_schedule_and_what_its_losses_read(finished_run, tmp_path, monkeypatch, capsys):
    """The curves' titles and legends come from the run's recipe: One Cycle and label smoothing for the course's,
    linear and the logits x 0.125 for Page's. `python -m s10.plots RUN` draws a finished run's curves again from its
    record (`make release-record` does, for a run drawn by older code) and refuses a folder that is not a run."""
    from s10.module import RECIPES

    finished, _ = finished_run
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished / "metrics.csv", run / "metrics.csv")
    config = json.loads((finished / "config.json").read_text())
    found = config["recipe"]["max_lr"]  # the finished run's range test's peak: the course's peak LR
    for name in ("course", "page"):
        config["recipe"].update(RECIPES[name]["values"])
        (run / "config.json").write_text(json.dumps(config))
        assert plots.main([str(run)]) == 0
    (course, page) = [([ax.get_title() for ax in fig.axes],
                       [t.get_text() for t in fig.axes[0].get_legend().get_texts()]) for fig in figures]
    assert course == (["Cross-entropy loss", "Accuracy", "Learning rate (One Cycle)"],
                      ["train (label smoothing 0.1)", "test"])
    assert page == (["Cross-entropy loss", "Accuracy", "Learning rate (linear)"],
                    ["train (logits x 0.125)", "test (logits x 0.125)"])
    course_lr, page_lr = [fig.axes[2].lines[0].get_ydata() for fig in figures]  # the recorded recipe's schedule
    assert page_lr[0] == 0.0 and 0.3 < max(page_lr) <= 0.4  # Page's: from 0 to 0.4 (a short run's steps miss the peak)
    assert course_lr[0] == pytest.approx(found / 100)  # One Cycle's start: peak / div_factor
    assert plots.main([str(tmp_path / "nowhere")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_report_is_deterministic_and_rewrites_the_readme(finished_run, tmp_path):
    from s10.report import END, HEADLINE_END, HEADLINE_START, RUN_END, RUN_START, START, main

    run, _ = finished_run
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    readme.write_text(f"# title\n\n{HEADLINE_START}\nold\n{HEADLINE_END}\n\n{RUN_START}\nold\n{RUN_END}\n\nfooter\n")
    page.write_text(f"# results\n\n{START}\nold\n{END}\n\nfooter\n")
    args = [str(run), "--readme", str(readme), "--results", str(page)]
    assert main(args) == 0
    first = readme.read_bytes(), page.read_bytes()
    assert main(args) == 0
    assert (readme.read_bytes(), page.read_bytes()) == first
    text = first[1].decode()
    assert "\nold\n" not in text and text.endswith("footer\n") and "| 2 |" in text and "misclassified.png" in text
    headline = first[0].decode()
    assert "\nold\n" not in headline and "test accuracy on CIFAR-10's" in headline and headline.endswith("footer\n")
    assert "curves.png" in headline and "<details>" in headline and "misclassified.png" in headline
    assert main([str(tmp_path / "nothing")]) == 2


def test_report_says_which_app_examples_the_model_gets_wrong(finished_run, tmp_path):
    """The examples section names exactly the examples whose top-1 class is not their own (as the app reads them)."""
    from s10.inference import load_image, probabilities, to_input
    from s10.report import render

    run, data = finished_run
    examples = tmp_path / "examples"
    examples.mkdir()
    model = S10Net.from_pretrained(run / "model")
    cfg = model.config
    for name in cfg.class_names:
        shutil.copy(next((data / "test" / name).glob("*.png")), examples / f"{name}.png")
    wrong = []
    for name in cfg.class_names:
        x = to_input(load_image(examples / f"{name}.png"), cfg.mean, cfg.std)
        pred = cfg.class_names[probabilities(model, x).argmax().item()]
        if pred != name:
            wrong.append(f"`{name}.png` (predicted {pred})")
    text = render(run, examples=examples)
    n = len(cfg.class_names)
    assert f"classified by this model: {n - len(wrong)} of {n} as their own class." in text
    if wrong:
        assert "Not classified as their own class: " + ", ".join(wrong) + "." in text
    else:
        assert "Not classified" not in text
    (examples / "airplane.png").write_bytes((examples / "cat.png").read_bytes())  # not this model's classes
    assert "The app's examples" not in render(run, examples=examples)
    assert "The app's examples" not in render(run, examples=None)


def test_report_states_the_hardware_precision_wall_time_and_final_figure(finished_run, tmp_path):
    from s10.report import duration, render

    run, _ = finished_run
    assert (duration(42.0), duration(3 * 3600 + 25 * 60 + 10)) == ("0.7 min", "3 h 25 min")
    config = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    text = render(run, examples=None)
    assert f"- Wall time: {duration(results['train_time_s'])} of training on the CPU" in text
    assert f"precision {config['args']['precision']};" in text and config["hardware"]["cpu"] in text
    # The log table ends on the last epoch; the line after it gives the published (float32) figures.
    assert (f"Final evaluation of the published weights (float32, all {results['test_images']:,} test images): "
            f"**{100 * results['test_acc']:.2f} %**, {100 * results['test_acc_tta']:.2f} % with flip TTA.") in text
    assert "- Note:" not in text


def test_report_renders_the_seeds_spread_when_the_release_has_one(finished_run, tmp_path):
    """With RUN/seeds/summary.json (python -m s10.seeds), the results section gets the seeds' table and the
    headline the mean +- sd; without it, neither."""
    import shutil

    from s10 import seeds
    from s10.report import headline, render
    from tests.test_seeds import fake_run, same_data_as

    run = tmp_path / "release"
    shutil.copytree(finished_run[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    assert "over 3 seeds" not in headline(run) and "seeds" not in render(run, examples=None).lower()
    config = json.loads((run / "config.json").read_text())
    same_data = same_data_as(run)
    runs = [fake_run(tmp_path / f"s{k}", k, acc, acc + 0.005, recipe=config["recipe"],
                     precision=config["args"]["precision"], **same_data)
            for k, acc in enumerate((0.9401, 0.9432, 0.9388))]
    seeds.record(runs, run / "seeds")
    assert "The recipe over 3 seeds: **94.07 % +- 0.23**" in headline(run)
    text = render(run, examples=None)
    assert "| **mean +- sd over 3 seeds** | | **94.07 % +- 0.23** | **94.57 % +- 0.23** |" in text
    assert "| 1 | 2.31e-03 | 94.32 % | 94.82 % |" in text  # each seed's own peak LR from its range test
    assert "](seeds)" in text and "Recipes compared" not in text
    assert "of at least 94.50 % over 3 seeds: **not reached**, 0.43 points short." in text

    # Another recipe's seeds are not printed as this release's: a clear error, exit 2.
    other = [fake_run(tmp_path / f"o{k}", k, 0.95, 0.955, **same_data) for k in range(2)]
    seeds.record(other, run / "seeds")
    with pytest.raises(ValueError, match="another recipe"):
        headline(run)
    proc = subprocess.run([sys.executable, "-m", "s10.report", str(run)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2 and "another recipe" in proc.stderr and "Traceback" not in proc.stderr


def test_report_sets_the_release_beside_the_earlier_recipes(finished_run, tmp_path):
    """RUN/recipes/<name>/ (an earlier release's record, `make recipe-record`) gives the "Recipes compared" table:
    its row and this release's, each with what it sets and its accuracy."""
    import shutil

    from s10 import seeds
    from s10.report import render
    from tests.test_seeds import fake_run, same_data_as

    run = tmp_path / "release"
    shutil.copytree(finished_run[0], run, ignore=shutil.ignore_patterns("checkpoints"))
    results = json.loads((run / "results.json").read_text())
    seeds.record([fake_run(tmp_path / "course", 0, 0.9367, 0.9435, label_smoothing=0.1, **same_data_as(run))],
                 run / "recipes" / "course")
    seeds.record([run], run / "recipes" / "same")  # a record of the release's own recipe: its row is the release's
    config = json.loads((run / "config.json").read_text())
    given = 2 * config["recipe"]["max_lr"]  # the release's recipe with a peak LR given: another recipe, its own row
    seeds.record([fake_run(tmp_path / "given", 1, 0.9, 0.91, recipe=config["recipe"],
                           precision=config["args"]["precision"], max_lr=given, **same_data_as(run))],
                 run / "recipes" / "given-lr")
    text = render(run, examples=None)
    assert "### Recipes compared" in text and "](recipes)" in text
    assert f"| given-lr | {seeds.brief(config['recipe'], given)} | 1 | 90.00 % |" in text
    assert seeds.brief(config["recipe"], given).endswith(f", peak LR {given:.2e} given (no range test)")
    assert "| same |" not in text
    rows = [line for line in text.splitlines() if line.startswith(("| course |", "| this release's recipe |"))]
    assert rows == ["| course | Adam, L2 0.0001, label smoothing 0.1, random flip, peak LR from each seed's range test "
                    "| 0 | 93.67 % | 94.35 % |",
                    f"| this release's recipe | {seeds.brief(config['recipe'], seeds.peak_lr(config))} | 0 | "
                    f"{100 * results['test_acc']:.2f} % | {100 * results['test_acc_tta']:.2f} % |"]


def test_one_cycle_peaks_at_epoch_5_of_24():
    from s10.module import S10Module

    module = S10Module(recipe=Recipe(max_lr=2e-3, schedule="one_cycle"), steps_per_epoch=10)
    schedule = module.lr_schedule()
    assert len(schedule) == 240 and max(schedule) == pytest.approx(2e-3)
    assert schedule.index(max(schedule)) in (49, 50)  # 5/24 of 240 steps
    assert schedule[0] == pytest.approx(2e-5) and schedule[-1] == pytest.approx(2e-7, rel=0.05)


def test_a_range_test_that_never_sees_a_finite_loss_is_one_line(tiny_data, tmp_path, capfd, monkeypatch):
    """A loss that is never finite: the trainer says so in one line, names flags that exist, exits 2."""
    import fabric_train
    from s10.module import S10Module

    real = S10Module.training_step

    def nan_loss(self, batch, batch_idx):
        out = real(self, batch, batch_idx)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(S10Module, "training_step", nan_loss)
    code = fabric_train.cli(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke", "--find-lr",
                             "--lr-find-steps", "3", "--batch-size", "16", "--no-progress-bar",
                             "--precision", "32-true"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not finite" in err[0] and "--max-lr instead of --find-lr" in err[0], err
