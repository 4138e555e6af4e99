"""The recipe options beyond the course's: a moving average of the weights, decoupled weight decay, alternating flip."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from s10.data import Split, alternating_flips, augment, augmented_batches, normalize
from s10.model import CIFAR10_MEAN, CIFAR10_STD, S10Net
from s10.module import Recipe, S10Module, WeightAverage
from tests.conftest import ok, run_train

SMOKE = ["--smoke", "--batch-size", 16, "--no-progress-bar", "--precision", "32-true"]


def test_the_weight_average_equals_a_hand_computed_one():
    """After k updates, every parameter and batch-norm running statistic is the exponential average computed by
    hand, start included; the batch-norm step counts are the network's."""
    torch.manual_seed(0)
    net, decay = S10Net(), 0.8
    average = WeightAverage(net, decay)
    expected = {k: v.clone().double() for k, v in net.state_dict().items() if v.is_floating_point()}
    for step in range(3):
        net.train()(torch.randn(4, 3, 32, 32))  # moves the running statistics and the step counts
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        average.update(net)
        for k, v in net.state_dict().items():
            if v.is_floating_point():
                expected[k] = decay * expected[k] + (1 - decay) * v.double()
    got = average.net.state_dict()
    for k, v in net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(got[k].double(), expected[k], rtol=1e-5, atol=1e-6, msg=k)
        else:
            assert torch.equal(got[k], v), k
    assert not any(p.requires_grad for p in average.net.parameters())


def test_decoupled_decay_skips_batch_norm_parameters_and_biases():
    """AdamW's groups: every convolution and linear weight decays, no batch-norm weight or bias and no linear bias
    does. One step with zero gradients moves a decayed weight by lr x decay of itself and leaves the others."""
    module = S10Module(recipe=Recipe(optimizer="adamw", weight_decay=0.5, max_lr=1.0, div_factor=10.0))
    decayed, kept = module.decay_groups(0.5)
    names = {id(p): n for n, p in module.named_parameters()}
    assert {names[id(p)] for p in decayed["params"]} == {n for n, p in module.named_parameters()
                                                          if n.endswith("weight") and p.ndim > 1}
    assert all(n.endswith("bias") or ".1." in n or ".2." in n for n in (names[id(p)] for p in kept["params"]))
    assert "net.head.2.bias" in {names[id(p)] for p in kept["params"]}
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # lr = max_lr / div_factor = 0.1
    for n, p in module.named_parameters():
        factor = 1 - 0.1 * 0.5 if p.ndim > 1 else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, msg=n)


def test_alternating_flip_mirrors_exactly_what_the_previous_epoch_did_not():
    a, b, c = (alternating_flips(1000, seed=3, epoch=e, device="cpu") for e in (1, 2, 3))
    assert torch.equal(a, ~b) and torch.equal(a, c) and 400 < int(a.sum()) < 600
    assert not torch.equal(a, alternating_flips(1000, seed=4, epoch=1, device="cpu"))
    # augment mirrors where the mask says (no crop, no CutOut: the output is the image or its mirror image)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    mask = torch.tensor([True, False] * 4)
    out = augment(images, CIFAR10_MEAN, CIFAR10_STD, torch.Generator().manual_seed(0), pad=0, cutout=0, flip=mask)
    want = normalize(torch.where(mask[:, None, None, None], images.flip(-1), images), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(out, want)


def test_the_training_batches_follow_the_alternating_flips(monkeypatch):
    """augmented_batches hands each image its own flip: the label of image i is i, so each batch's labels say which
    images it holds, and the flips augment receives are theirs."""
    import s10.data

    n = 64
    split = Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8), torch.arange(n))
    seen = []
    real = s10.data.augment

    def recording(images, mean, std, generator, flip=None):
        seen.append(flip)
        return real(images, mean, std, generator, flip=flip)

    monkeypatch.setattr(s10.data, "augment", recording)
    for epoch in (1, 2):
        labels = torch.cat([y for _, y in augmented_batches(split, 16, 0, 1, 0, epoch, CIFAR10_MEAN, CIFAR10_STD,
                                                            alternating_flip=True)])
        flips = torch.cat(seen[-4:])
        assert torch.equal(flips, alternating_flips(n, 0, epoch, "cpu")[labels])
    list(augmented_batches(split, 16, 0, 1, 0, 1, CIFAR10_MEAN, CIFAR10_STD))
    assert seen[-1] is None  # off: augment draws its own coins


def test_a_run_with_the_weight_average_resumes_to_the_uninterrupted_end(tiny_data, tmp_path):
    """--ema-decay: the published weights are the average (the checkpoint's, not the network's), and a run stopped
    after epoch 1 and resumed publishes the uninterrupted run's average."""
    full, parts = tmp_path / "full", tmp_path / "parts"
    flags = [*SMOKE, "--epochs", 3, "--ema-decay", 0.7, "--ema-every", 1, "--optimizer", "adamw",
             "--weight-decay", 0.05, "--alternating-flip"]
    ok(run_train("--data", tiny_data, "--out", full, *flags))
    ok(run_train("--data", tiny_data, "--out", parts, *flags, "--stop-after-epoch", 1))
    ok(run_train("--data", tiny_data, "--out", parts, *flags, "--resume"))
    a, b = load_file(full / "model" / "model.safetensors"), load_file(parts / "model" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    checkpoint = torch.load(full / "checkpoints" / "last.ckpt", weights_only=False)
    for k, v in a.items():
        assert torch.equal(checkpoint["ema"][f"net.{k}"].contiguous(), v), k
    assert not all(torch.equal(checkpoint["model"][f"net.{k}"].contiguous(), v) for k, v in a.items())
    recipe = json.loads((full / "config.json").read_text())["recipe"]
    assert (recipe["ema_decay"], recipe["optimizer"], recipe["alternating_flip"]) == (0.7, "adamw", True)
    card = (full / "model" / "README.md").read_text()
    assert "moving average of the weights (decay 0.7" in card and "AdamW" in card and "alternating flip" in card
    assert all(ref in card for ref in ("bag-of-tricks", "arXiv:2404.00498", "arXiv:1711.05101"))  # their sources


@pytest.mark.parametrize("flags, message", [
    (["--optimizer", "sgd"], "--optimizer must be adam or adamw"),
    (["--ema-decay", "1"], "--ema-decay must lie in [0, 1)"),
    (["--ema-every", "0"], "--ema-every must be at least 1"),
])
def test_bad_recipe_options_are_one_line(tiny_data, tmp_path, capfd, flags, message):
    import fabric_train

    code = fabric_train.cli(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke", *flags])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_the_weight_average_only_observes_the_training(tiny_data, tmp_path):
    """The moving average reads the network and never feeds back: a run with it trains exactly the network of the
    same run without it (the checkpoints' own weights agree bit for bit), so the two publish different weights of
    one trajectory, and comparing them compares nothing else."""
    flags = [*SMOKE, "--epochs", 2, "--ema-every", 1]
    ok(run_train("--data", tiny_data, "--out", tmp_path / "off", *flags, "--ema-decay", 0))
    ok(run_train("--data", tiny_data, "--out", tmp_path / "on", *flags, "--ema-decay", 0.7))
    off, on = (torch.load(tmp_path / k / "checkpoints" / "last.ckpt", weights_only=False) for k in ("off", "on"))
    assert "ema" not in off and "ema" in on
    for k, v in off["model"].items():
        assert torch.equal(on["model"][k], v), k
    assert not all(torch.equal(on["ema"][k], v) for k, v in off["model"].items())
    rows = [json.loads((tmp_path / k / "config.json").read_text())["recipe"]["ema_decay"] for k in ("off", "on")]
    assert rows == [0.0, 0.7]


def test_the_course_recipe_is_reproduced_by_its_documented_flags():
    """docs/training.md's flags for the course's recipe give exactly the recipe the course release ran (its record in
    release/recipes/course), but for the seed and the found peak LR; the defaults give the seeds' recipe."""
    import re

    import fabric_train
    from s10 import seeds
    from s10.record import new_recipe
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "training.md").read_text()
    flags = re.search(r"\*\*The course's recipe\*\*: `([^`]+)`", text).group(1).split()
    args = fabric_train.parse_args(["--data", "x", "--out", "y", *flags])
    course = json.loads((ROOT / "release" / "recipes" / "course" / "seed0" / "config.json").read_text())["recipe"]
    assert seeds.full_recipe(dataclasses.asdict(new_recipe(args))) == seeds.full_recipe(course)
    assert seeds.full_recipe(dataclasses.asdict(Recipe())) != seeds.full_recipe(course)
    summary = ROOT / "release" / "seeds" / "summary.json"
    if summary.is_file():  # once the seeds are recorded: they ran the default recipe
        assert json.loads(summary.read_text())["recipe"] == seeds.full_recipe(dataclasses.asdict(Recipe()))


def test_a_record_from_before_the_options_resumes_as_it_ran():
    """A config.json written before the weight average and the alternating flip existed ran without them: a resume
    keeps it so, whatever today's defaults are."""
    old = {"epochs": 24, "batch_size": 512, "max_lr": 2.31e-3, "label_smoothing": 0.1, "seed": 0}
    recipe = Recipe.from_record(old)
    assert (recipe.ema_decay, recipe.alternating_flip, recipe.optimizer) == (0.0, False, "adam")
    assert recipe.label_smoothing == 0.1 and recipe.max_lr == 2.31e-3
    assert Recipe.from_record(dataclasses.asdict(Recipe())) == Recipe()  # a record with every field is itself


def test_a_run_too_short_for_the_weight_average_says_so(tiny_data, tmp_path):
    """With the moving average on, a smoke run gives it too few updates, and the log says how much of the initial
    weights is left and how to switch it off. Without the average, no warning."""
    ok(run_train("--data", tiny_data, "--out", tmp_path / "a", *SMOKE, "--epochs", 2, "--ema-decay", 0.99))
    log = (tmp_path / "a" / "train.log").read_text()
    assert "still holds 100% of the initial weights" in log and "pass --ema-decay 0" in log
    ok(run_train("--data", tiny_data, "--out", tmp_path / "b", *SMOKE, "--epochs", 2, "--ema-decay", 0))
    assert "initial weights" not in (tmp_path / "b" / "train.log").read_text()


def test_the_average_on_the_full_training_set_is_not_warned_short(caplog):
    """The warning is for smoke runs: Page's average (0.99 every 5 steps) over a full run (24 epochs of 97 steps of
    512) is not one."""
    import fabric_train
    pages = Recipe(ema_decay=0.99, ema_every=5)
    with caplog.at_level("WARNING"):
        fabric_train.warn_short_average(pages, 50_000 // pages.batch_size)
        assert not caplog.records
        fabric_train.warn_short_average(dataclasses.replace(pages, epochs=12), 50_000 // pages.batch_size)
        assert "initial weights" in caplog.text
