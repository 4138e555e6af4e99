"""The recipe options beyond the course's: a moving average of the weights, decoupled weight decay, alternating flip."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from s10.data import Split, alternating_flips, augment, augmented_batches, normalize
from s10.model import CIFAR10_MEAN, CIFAR10_STD, S10Net
from s10.module import Recipe, S10Module, WeightAverage
from tests.conftest import train_here

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
    module = S10Module(recipe=Recipe(optimizer="adamw", schedule="one_cycle", weight_decay=0.5, max_lr=1.0,
                                     div_factor=10.0))
    decayed, kept = module.param_groups()
    assert (decayed["weight_decay"], kept["weight_decay"]) == (0.5, 0.0)
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
    train_here("--data", tiny_data, "--out", full, *flags)
    train_here("--data", tiny_data, "--out", parts, *flags, "--stop-after-epoch", 1)
    train_here("--data", tiny_data, "--out", parts, *flags, "--resume")
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
    (["--optimizer", "lion"], "--optimizer must be one of adam, adamw, sgd"),
    (["--schedule", "cosine"], "--schedule must be one of one_cycle, linear"),
    (["--ghost-batch", "5"], "--ghost-batch must divide the batch size"),
    (["--floor-epochs", "20"], "--floor-epochs must end after the peak"),
    (["--logit-scale", "0"], "--logit-scale must be positive"),
    (["--recipe", "airbench"], "argument --recipe: invalid choice"),
    (["--recipe", "page", "--find-lr", "--max-lr", "0.1"], "not allowed with argument"),
    (["--ema-decay", "1"], "--ema-decay must lie in [0, 1)"),
    (["--ema-every", "0"], "--ema-every must be at least 1"),
])
def test_bad_recipe_options_are_one_line(tiny_data, tmp_path, capfd, flags, message):
    import fabric_train

    code = fabric_train.cli(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke", *flags])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


AVERAGED = [*SMOKE, "--epochs", 2, "--ema-every", 1]


@pytest.fixture(scope="session")
def run_without_average(tiny_data, tmp_path_factory):
    """A 2-epoch smoke run with the moving average off, read by the tests that compare with it."""
    run = tmp_path_factory.mktemp("no-average") / "run"
    train_here("--data", tiny_data, "--out", run, *AVERAGED, "--ema-decay", 0)
    return run


@pytest.mark.xdist_group("no_average")
def test_the_weight_average_only_observes_the_training(tiny_data, tmp_path, run_without_average):
    """The moving average reads the network and never feeds back: a run with it trains exactly the network of the
    same run without it (the checkpoints' own weights agree bit for bit), so the two publish different weights of
    one trajectory, and comparing them compares nothing else."""
    train_here("--data", tiny_data, "--out", tmp_path / "on", *AVERAGED, "--ema-decay", 0.7)
    runs = {"off": run_without_average, "on": tmp_path / "on"}
    off, on = (torch.load(runs[k] / "checkpoints" / "last.ckpt", weights_only=False) for k in ("off", "on"))
    assert "ema" not in off and "ema" in on
    for k, v in off["model"].items():
        assert torch.equal(on["model"][k], v), k
    assert not all(torch.equal(on["ema"][k], v) for k, v in off["model"].items())
    rows = [json.loads((runs[k] / "config.json").read_text())["recipe"]["ema_decay"] for k in ("off", "on")]
    assert rows == [0.0, 0.7]


def test_the_course_recipe_is_reproduced_by_its_name_and_its_documented_flags():
    """`--recipe course`, and docs/training.md's flags for it, give exactly the recipe the course release ran (its
    record in release/recipes/course), but for the seed and the found peak LR, with the LR range test on."""
    import re

    import fabric_train
    from s10 import seeds
    from s10.record import new_recipe
    from tests.conftest import ROOT

    text = (ROOT / "docs" / "training.md").read_text()
    flags = re.search(r"\*\*The course's recipe\*\*: `--recipe course`, or as single flags `([^`]+)`",
                      text).group(1).split()
    course = json.loads((ROOT / "release" / "recipes" / "course" / "seed0" / "config.json").read_text())["recipe"]
    for argv in (flags, ["--recipe", "course"]):
        args = fabric_train.parse_args(["--data", "x", "--out", "y", *argv])
        assert seeds.full_recipe(dataclasses.asdict(new_recipe(args))) == seeds.full_recipe(course), argv
        assert args.find_lr, argv
    assert seeds.full_recipe(dataclasses.asdict(Recipe())) != seeds.full_recipe(course)


def test_the_default_recipe_is_the_one_the_held_out_screen_chose():
    """What `make train` and `make seeds` run with no recipe named is the recipe the held-out screen chose
    (release/screen, by `screen_gains`, never on the test set): the recorded recipe of its 24-epoch `page` row, with
    the fields of every row the rule kept, and page's given peak LR (no range test)."""
    import fabric_train
    from s10 import seeds
    from s10.record import new_recipe
    from s10.report import screen_gains, screen_rows
    from tests.conftest import ROOT

    screen = ROOT / "release" / "screen"
    rows, flags, _ = screen_rows(screen)
    baseline = next(s for name, s in rows if not flags[name] and s["recipe"]["epochs"] == 24)
    chosen = page = seeds.full_recipe(baseline["recipe"])
    for name, (_, kept) in screen_gains(screen).items():
        row = seeds.full_recipe(dict(rows)[name]["recipe"])
        if kept and row["epochs"] == 24:
            chosen = {**chosen, **{k: v for k, v in row.items() if v != page[k]}}
    args = fabric_train.parse_args(["--data", "x", "--out", "y"])
    default = new_recipe(args)
    assert seeds.full_recipe(dataclasses.asdict(default)) == chosen
    assert (args.find_lr, default.max_lr) == (False, baseline["peak_lr"])


def test_the_adam_recipe_is_the_one_its_seeds_ran():
    """`--recipe adam` gives exactly the recipe of the earlier default's three seeds (every record in
    release/recipes/adam), but for the seed, with the range test finding the peak LR as it did for them."""
    import fabric_train
    from s10 import seeds
    from s10.record import new_recipe
    from tests.conftest import ROOT

    args = fabric_train.parse_args(["--data", "x", "--out", "y", "--recipe", "adam"])
    assert args.find_lr
    mine = seeds.full_recipe(dataclasses.asdict(new_recipe(args)))
    records = sorted((ROOT / "release" / "recipes" / "adam").glob("seed*/config.json"))
    assert len(records) == 3
    for record in records:
        config = json.loads(record.read_text())
        assert config["args"]["find_lr"] and seeds.full_recipe(config["recipe"]) == mine, record


def test_a_record_from_before_the_options_resumes_as_it_ran():
    """A config.json written before the weight average and the alternating flip existed ran without them: a resume
    keeps it so, whatever today's defaults are."""
    old = {"epochs": 24, "batch_size": 512, "max_lr": 2.31e-3, "label_smoothing": 0.1, "seed": 0}
    recipe = Recipe.from_record(old)
    assert (recipe.ema_decay, recipe.alternating_flip, recipe.optimizer) == (0.0, False, "adam")
    assert recipe.label_smoothing == 0.1 and recipe.max_lr == 2.31e-3
    assert Recipe.from_record(dataclasses.asdict(Recipe())) == Recipe()  # a record with every field is itself


@pytest.mark.xdist_group("no_average")
def test_a_run_too_short_for_the_weight_average_says_so(tiny_data, tmp_path, run_without_average):
    """With the moving average on, a smoke run gives it too few updates, and the log says how much of the initial
    weights is left and how to switch it off. Without the average, no warning."""
    train_here("--data", tiny_data, "--out", tmp_path / "a", *SMOKE, "--epochs", 2, "--ema-decay", 0.99)
    log = (tmp_path / "a" / "train.log").read_text()
    assert "still holds 100% of the initial weights" in log and "pass --ema-decay 0" in log
    assert "initial weights" not in (run_without_average / "train.log").read_text()


def test_the_average_on_the_full_training_set_is_not_warned_short():
    """The warning is for smoke runs: Page's average (0.99 every 5 steps) over a full run (24 epochs of 97 steps of
    512) is not one."""
    from s10.module import short_average

    pages = Recipe(ema_decay=0.99, ema_every=5)
    assert short_average(pages, 50_000 // pages.batch_size) is None
    assert "initial weights" in short_average(dataclasses.replace(pages, epochs=12), 50_000 // pages.batch_size)


def test_the_page_recipe_is_pages_baseline_and_single_flags_override_it():
    """`--recipe page`: SGD with Nesterov momentum 0.9, a given peak LR 0.4 (no range test), L2 5e-4 on every
    parameter, logits x 0.125 in the loss, the linear 0 -> peak at epoch 5 -> 0 at epoch 24 schedule, plain flip, no
    smoothing or average. A single flag overrides one value and keeps the rest."""
    import fabric_train
    from s10.record import new_recipe

    args = fabric_train.parse_args(["--data", "x", "--out", "y", "--recipe", "page"])
    r = new_recipe(args)
    assert not args.find_lr
    assert (r.optimizer, r.momentum, r.nesterov, r.max_lr, r.weight_decay, r.logit_scale, r.schedule) == (
        "sgd", 0.9, True, 0.4, 5e-4, 0.125, "linear")
    assert (r.label_smoothing, r.alternating_flip, r.ema_decay, r.epochs, r.batch_size) == (0.0, False, 0.0, 24, 512)
    module = S10Module(recipe=r, steps_per_epoch=97)
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD) and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["weight_decay"] == 5e-4
    lrs = module.lr_schedule()
    assert len(lrs) == 24 * 97 and lrs[0] == 0.0 and max(lrs) == pytest.approx(0.4, rel=1e-3)
    assert lrs.index(max(lrs)) == round(5 * 97) and lrs[-1] == pytest.approx(0.4 / (19 * 97), rel=1e-6)
    changed = new_recipe(fabric_train.parse_args(["--data", "x", "--out", "y", "--recipe", "page",
                                                  "--label-smoothing", "0.2"]))
    assert changed == dataclasses.replace(r, label_smoothing=0.2)
    default = fabric_train.parse_args(["--data", "x", "--out", "y"])  # the default recipe is page's
    assert new_recipe(default) == r and not default.find_lr


def test_a_named_recipe_sets_every_value_so_that_none_follows_the_defaults():
    """Each named recipe sets every field of `Recipe` but the run's length, batch, seed and range-test steps (and the
    peak LR where the range test finds it), and a record that predates a field reads it as runs did then: changing a
    default (to the best recipe measured) changes neither a named recipe nor how an old record reads."""
    from s10.module import RECIPES, RECORDED_BEFORE

    free = {"seed", "epochs", "batch_size", "lr_find_steps"}
    every = {f.name for f in dataclasses.fields(Recipe)}
    for name, recipe in RECIPES.items():
        assert set(recipe["values"]) | free | ({"max_lr"} if recipe["find_lr"] else set()) == every, name
    assert set(RECORDED_BEFORE) | free | {"max_lr", "label_smoothing"} == every


def test_the_tricks_recipe_is_page_with_the_options_that_keep_the_network():
    """`--recipe tricks` is `--recipe page` with the issue's bundle written out as flags (the screen's tricks-24 ran
    with them on top of `--recipe page`), nothing else; the screen's table names exactly those flags on top of `page`,
    and `make screen` trains it by that name."""
    import fabric_train
    from s10 import seeds
    from s10.record import new_recipe
    from s10.report import beyond_page
    from tests.conftest import ROOT

    bundle = ["--label-smoothing", "0.2", "--alternating-flip", "--ghost-batch", "32", "--freeze-bn-scale",
              "--bn-bias-lr", "64", "--bn-bias-decay", "0.015625", "--ema-decay", "0.99", "--ema-every", "5",
              "--lr-floor", "0.1", "--floor-epochs", "2"]
    base = ["--data", "x", "--out", "y"]
    tricks = new_recipe(fabric_train.parse_args(base + ["--recipe", "tricks"]))
    assert tricks == new_recipe(fabric_train.parse_args(base + ["--recipe", "page"] + bundle))
    assert not fabric_train.parse_args(base + ["--recipe", "tricks"]).find_lr
    summary = {"recipe": dataclasses.asdict(tricks), "peak_lr": tricks.max_lr}
    assert sorted(beyond_page(summary)) == sorted(
        ["`--label-smoothing 0.2`", "`--alternating-flip`", "`--ghost-batch 32`", "`--freeze-bn-scale`",
         "`--bn-bias-lr 64`", "`--bn-bias-decay 0.015625`", "`--ema-decay 0.99`", "`--lr-floor 0.1`", "`--floor-epochs 2`"])
    assert seeds.full_recipe(dataclasses.asdict(tricks)) != seeds.full_recipe(dataclasses.asdict(
        new_recipe(fabric_train.parse_args(base + ["--recipe", "page"]))))
    assert "run tricks-24 --recipe tricks" in (ROOT / "Makefile").read_text()


def test_the_linear_schedule_holds_its_floor_over_the_last_epochs():
    r = Recipe(schedule="linear", max_lr=1.0, epochs=10, pct_start=0.2, lr_floor=0.1, floor_epochs=2)
    lrs = S10Module(recipe=r, steps_per_epoch=10).lr_schedule()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.5) and lrs[20] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(1.0 - 0.9 * 30 / 60)  # halfway down from the peak to the floor
    assert all(lr == pytest.approx(0.1) for lr in lrs[80:])


def test_sgd_takes_a_nesterov_step_with_l2_on_every_parameter():
    """Two steps of the optimizer against the update written out: g' = g + wd w; v = m v + g'; w -= lr (g' + m v)."""
    r = Recipe(optimizer="sgd", schedule="linear", max_lr=0.5, weight_decay=0.01, momentum=0.9)
    module = S10Module(recipe=r, steps_per_epoch=10)
    optimizer = module.configure_optimizers()["optimizer"]
    for group in optimizer.param_groups:
        group["lr"] = 0.5
    w = {n: p.detach().clone() for n, p in module.named_parameters()}
    v = {n: torch.zeros_like(t) for n, t in w.items()}
    torch.manual_seed(1)
    for _ in range(2):
        grads = {n: torch.randn_like(t) for n, t in w.items()}
        for n, p in module.named_parameters():
            p.grad = grads[n].clone()
        optimizer.step()
        for n in w:
            g = grads[n] + 0.01 * w[n]
            v[n] = 0.9 * v[n] + g
            w[n] = w[n] - 0.5 * (g + 0.9 * v[n])
    for n, p in module.named_parameters():
        torch.testing.assert_close(p.detach(), w[n], rtol=1e-5, atol=1e-6, msg=n)


def test_the_logit_scale_is_in_the_loss_only():
    """logit_scale multiplies the logits inside the training loss, and inside the test loss that the curves set
    beside it (without label smoothing); the network's outputs (what is published and evaluated) are the same as
    without it."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plain = S10Module(recipe=Recipe(label_smoothing=0.0, logit_scale=1.0)).eval()
    scaled = S10Module(recipe=Recipe(label_smoothing=0.0, logit_scale=0.125)).eval()
    scaled.load_state_dict(plain.state_dict())
    logits = plain(x)
    torch.testing.assert_close(scaled(x), logits)
    want = torch.nn.functional.cross_entropy(logits * 0.125, y)
    torch.testing.assert_close(scaled.training_step((x, y), 0)["loss"], want)
    assert not torch.allclose(plain.training_step((x, y), 0)["loss"], want)
    scaled.validation_step((x, y), 0)
    torch.testing.assert_close(scaled.test_loss.compute(), want)


def test_ghost_batch_norm_normalises_each_group_and_keeps_the_network():
    """Ghost batch norm of groups of 4 in an 8-image batch: the training output, and the gradients of the input and
    the parameters, are each group's through its own plain batch norm, in either memory layout (the trainer's is
    channels-last, and it is kept); the running statistics move once, by the groups' average; evaluation, the
    parameters and the state dict's keys are as without it."""
    from s10.module import ghost_batch_norm

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3).train()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.5, 0.5)
    holder = torch.nn.Sequential(bn)
    x = torch.randn(8, 3, 5, 5) * 3 + 1
    groups = [copy_of(bn) for _ in range(2)]
    want = torch.cat([g(part) for g, part in zip(groups, x.chunk(2))])
    with ghost_batch_norm(holder, 4):
        got = holder(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, (groups[0].running_mean + groups[1].running_mean) / 2)
    torch.testing.assert_close(bn.running_var, (groups[0].running_var + groups[1].running_var) / 2)
    assert int(bn.num_batches_tracked) == 1 and "forward" not in vars(bn)  # restored after the block
    before = copy_of(bn)
    for layout in (torch.contiguous_format, torch.channels_last):
        ghost, groups = copy_of(before), [copy_of(before) for _ in range(2)]
        xs = [x.contiguous(memory_format=layout).requires_grad_() for _ in range(2)]
        up = torch.randn(8, 3, 5, 5)
        with ghost_batch_norm(torch.nn.Sequential(ghost), 4):
            got = ghost(xs[0])
        (got * up).sum().backward()
        (torch.cat([g(part) for g, part in zip(groups, xs[1].chunk(2))]) * up).sum().backward()
        assert got.is_contiguous(memory_format=layout)
        torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-5, atol=1e-5)
        for name in ("weight", "bias"):
            grad = getattr(groups[0], name).grad + getattr(groups[1], name).grad
            torch.testing.assert_close(getattr(ghost, name).grad, grad, rtol=1e-5, atol=1e-5)
    plain = copy_of(bn)
    torch.testing.assert_close(holder(x), plain(x))  # outside the block: plain batch norm
    module = S10Module(recipe=Recipe(ghost_batch=4))
    assert module.state_dict().keys() == S10Module().state_dict().keys()
    module.eval()
    with ghost_batch_norm(module.net, 4):
        out = module(x.repeat(1, 1, 7, 7)[:, :, :32, :32])
    torch.testing.assert_close(out, module(x.repeat(1, 1, 7, 7)[:, :, :32, :32]))  # evaluation: running statistics


def copy_of(module):
    import copy

    return copy.deepcopy(module)


def test_frozen_scales_and_the_bias_multipliers():
    """freeze_bn_scale keeps every batch-norm scale at 1 and out of the optimizer (the parameters stay: the count
    and the state dict are the spec's); bn_bias_lr / bn_bias_decay give the batch-norm biases their own group."""
    from s10.module import batch_norms

    r = Recipe(optimizer="sgd", schedule="linear", max_lr=0.4, weight_decay=5e-4, freeze_bn_scale=True,
               bn_bias_lr=64.0, bn_bias_decay=1 / 64)
    module = S10Module(recipe=r, steps_per_epoch=10)
    assert sum(p.numel() for p in module.net.parameters()) == 6_573_130
    optimizer = module.configure_optimizers()["optimizer"]
    main, biases = optimizer.param_groups
    bns = batch_norms(module.net)
    assert {id(p) for p in biases["params"]} == {id(bn.bias) for bn in bns}
    assert biases["lr_scale"] == 64.0 and biases["weight_decay"] == pytest.approx(5e-4 / 64)
    optimizer_params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(bn.weight) in optimizer_params for bn in bns)
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    opt = scheduler.optimizer
    for _ in range(5):
        opt.step(), scheduler.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(64 * opt.param_groups[0]["lr"])
    x = torch.randn(4, 3, 32, 32)
    loss = module.training_step((x, torch.zeros(4, dtype=torch.int64)), 0)["loss"]
    loss.backward()
    assert all(bn.weight.grad is None and torch.equal(bn.weight, torch.ones_like(bn.weight)) for bn in bns)


def test_a_held_out_split_is_measured_and_never_trained_on(tiny_data, tmp_path, capfd):
    """--holdout: the held-out images are left out of training (the sizes say so) and measured at the end as
    val_acc; the recipe's name and the options (ghost batch norm, frozen scales, bias LR) reach config.json."""
    a = tmp_path / "a"
    flags = ["--batch-size", 8, "--epochs", 1, "--no-progress-bar", "--precision", "32-true", "--recipe", "page"]
    flags += ["--ghost-batch", 4, "--freeze-bn-scale", "--bn-bias-lr", 16]  # a named recipe sets every value
    train_here("--data", tiny_data, "--out", a, *flags, "--holdout", 10)
    results = json.loads((a / "results.json").read_text())
    config = json.loads((a / "config.json").read_text())
    assert results["val_images"] == 10 and 0 <= results["val_acc"] <= 1
    assert config["data"]["held_out_images"] == 10 and config["data"]["train_images"] == 3 * 24 - 10
    assert config["args"]["recipe"] == "page" and config["args"]["holdout"] == 10
    assert (config["recipe"]["ghost_batch"], config["recipe"]["freeze_bn_scale"], config["recipe"]["bn_bias_lr"]) \
        == (4, True, 16.0)
    # A resume cannot change the data under the run: without --holdout it would train on the held-out images.
    import fabric_train

    capfd.readouterr()
    code = fabric_train.cli(["--data", str(tiny_data), "--out", str(a), *map(str, flags), "--resume"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has --holdout 10, not None" in err[0], err
