"""Train the S10 net on CIFAR-10 with the S10 recipe: a LightningModule run by a minimal Fabric loop.

    python fabric_train.py --data .data/cifar10 --out runs/s10              # one device (GPU if any)
    python fabric_train.py --data .data/cifar10 --out runs/s10 --resume     # continue a killed run
    python fabric_train.py --accelerator cpu --devices 2 --data ... --out ...        # 2 processes (DDP, gloo)
    fabric run --accelerator cuda --devices 4 fabric_train.py --data ... --out ...   # 4 GPUs
    fabric run --num-nodes 2 --node-rank R --main-address HOST ... fabric_train.py ...   # 2 nodes

Measured speed: docs/speed.md; the release run: README.md and docs/results.md; CUDA, nodes, SLURM: docs/training.md.

What changes versus plain PyTorch: Fabric places the model and data (no .to(device)), runs every forward pass under
the precision's autocast (`--precision`), launches and syncs the processes (DDP), and saves/loads the checkpoint.
The data stays on the device as uint8 and is augmented a batch at a time there (s10/data.py). Names: `net` is the
network (an nn.Module), `module` the LightningModule that holds it, `model` what `fabric.setup` makes of the module.
The run's record (config.json, results, model/) is written by s10/record.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from s10 import hardware, record
from s10.distributed import leave
from s10.hardware import ACCELERATORS, PRECISIONS, STRATEGIES, canonical_precision, parse_devices
from s10.record import UsageError, new_recipe, start_or_resume
from s10.run import Run

log = logging.getLogger("s10")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        raise UsageError(message)


# -- arguments -------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    """The run's flags. Every field of `Recipe` is an option (`max_lr` -> `--max-lr`) with the field's default and
    help; an option left out is None here, so a resumed run can tell it from one that was given."""
    from s10.module import RECIPES, Recipe

    p = Parser(prog="fabric_train.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="'cifar10' (torchvision download) or a class-folder root")
    p.add_argument("--out", required=True, type=Path, help="run folder (refused if it holds a run, unless --resume)")
    p.add_argument("--recipe", choices=RECIPES, help="a named recipe: its values, then any single flag below over "
                   "them (docs/training.md: Recipes); default: the Recipe defaults")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--find-lr", action="store_true", help="take the peak LR from an LR range test first")
    for f in fields(Recipe):
        group, flag = (lr if f.name == "max_lr" else p), "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{f.metadata['help']} (default {'on' if f.default else 'off'})")
        else:
            shown = f"{f.default:g}" if isinstance(f.default, (int, float)) else f.default
            group.add_argument(flag, type=type(f.default), default=None, help=f"{f.metadata['help']} (default {shown})")
    p.add_argument("--precision", help=f"{', '.join(PRECISIONS)}; default: bf16-mixed where the device computes "
                   "bf16 natively and fast, else 16-mixed on a GPU and 32-true on a CPU (docs/training.md: Precision)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (first steps are slower)")
    p.add_argument("--accelerator", default="auto", choices=ACCELERATORS)
    p.add_argument("--devices", default="auto", help="'auto' (every GPU, else 1 CPU process), a count, or a comma "
                   "list of GPU ids")
    p.add_argument("--strategy", default="auto", choices=STRATEGIES, help="'auto' (DDP on several devices) or 'ddp'")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out: from checkpoints/last.ckpt, or from its start if it has none")
    p.add_argument("--smoke", action="store_true", help="a few batches of each split (for tests)")
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--test-limit", type=int, help="test on a seeded random subset of this many images")
    p.add_argument("--holdout", type=int, help="keep this many training images out of training (the same ones in "
                   "every run) and report the accuracy on them as val_acc: choose recipes on it, not on the test set")
    p.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="save checkpoints/last.ckpt before the first epoch and after every epoch (default on)")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="push model/ to this Hub model repo at the end")
    p.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # tests: simulate a killed run
    args = p.parse_args(argv)
    if args.num_nodes < 1:
        raise UsageError(f"--num-nodes must be at least 1, got {args.num_nodes}")
    if args.recipe and RECIPES[args.recipe]["find_lr"] and args.max_lr is None:
        args.find_lr = True  # the recipe's peak LR is the range test's, unless one is given
    # `fabric run` reads --precision and --strategy itself (wherever they stand) and hands them over in LT_*.
    try:
        args.precision = canonical_precision(args.precision or os.environ.get("LT_PRECISION"))
        parse_devices(args.devices)  # checked before any process starts
    except ValueError as err:
        raise UsageError(str(err)) from None
    if os.environ.get("LT_PRECISION"):  # Fabric compares its precision with this one, alias and all
        os.environ["LT_PRECISION"] = args.precision
    if args.strategy == "auto" and os.environ.get("LT_STRATEGY", "auto") not in STRATEGIES:
        raise UsageError(f"strategy {os.environ['LT_STRATEGY']!r} is not supported: use one of {', '.join(STRATEGIES)}"
                         " (sharded strategies such as FSDP or DeepSpeed would split the weights and the optimizer)")
    new_recipe(args)  # a bad recipe value is refused before any process starts
    return args


# -- Fabric ----------------------------------------------------------------------------------------------------------


def build_fabric(args):
    """Fabric with the run's callbacks (switched on or off by flags), loggers and rank-0 checkpoint reads; the
    precision resolved here (the flag; a resumed run's own, read from this node's copy if it has one; the device's
    default). A flag Fabric rejects is a usage error; anything else (a CUDA or NCCL failure, no memory) keeps its
    traceback."""
    from lightning.fabric import Fabric
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from s10.callbacks import Checkpoint, ProgressBar, run_loggers
    from s10.distributed import RankZeroCheckpointIO

    callbacks = [ProgressBar()] if args.progress_bar else []
    if args.checkpoint:
        callbacks.append(Checkpoint(args.out / "checkpoints"))
    # Fabric announces the precision on stderr before the flags are all checked; the run's log states it instead.
    for name in ("lightning.fabric", "lightning.pytorch"):  # rank_zero_info logs to one of them
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.precision is None and args.resume:
        try:
            args.precision = json.loads((args.out / "config.json").read_text())["args"]["precision"]
        except (OSError, ValueError, KeyError):
            pass  # this node has no copy: rank 0's is checked against it in start_or_resume
    args.precision = args.precision or hardware.default_precision(hardware.device_type(args.accelerator))
    try:
        fabric = Fabric(accelerator=args.accelerator, devices=parse_devices(args.devices), strategy=args.strategy,
                        num_nodes=args.num_nodes, precision=args.precision, plugins=[RankZeroCheckpointIO()],
                        callbacks=callbacks, loggers=run_loggers(args.out))
    except (MisconfigurationException, ValueError, TypeError) as err:  # a flag Fabric does not accept
        raise UsageError(str(err).splitlines()[0]) from None
    args.precision = fabric.strategy.precision.precision  # what runs: Fabric turns 16-mixed on a CPU into bf16-mixed
    return fabric


# -- data and model --------------------------------------------------------------------------------------------------


def load_data(run: Run) -> None:
    """Global rank 0 loads (downloads, decodes, caches) first, so a download into a shared folder happens once; then
    each node's local rank 0, so nodes with a disk of their own prepare their own copy; then the other ranks, which
    read their node's cache. A data error on any rank stops every rank with that message. Every rank takes the same
    seeded subsets and puts the training split and its shard of the test split on its device."""
    from s10.data import DataError, load_dataset, select, shard
    from s10.distributed import first_error

    fabric, args, recipe = run.fabric, run.args, run.recipe
    data, error = None, None
    for local in (False, True):  # global rank 0 first, then each node's local rank 0, then the rest
        with fabric.rank_zero_first(local=local):
            if (fabric.global_rank == 0) != local:
                try:
                    data = load_dataset(args.data)
                except DataError as err:
                    error = str(err)
    error = first_error(fabric, error)
    if error:
        raise UsageError(error)
    b = recipe.batch_size  # --smoke: 3 batches, and an odd test count (uneven shards get exercised)
    limits = (3 * b, 2 * b + 1) if args.smoke else (args.train_limit, args.test_limit)
    try:
        select(data, recipe.seed, *limits, args.holdout)
    except DataError as err:
        raise UsageError(str(err)) from None
    if data.val is not None:
        run.val = data.val.subset(shard(len(data.val), fabric.global_rank, fabric.world_size)).to(fabric.device)
    if len(data.train) < recipe.batch_size:
        raise UsageError(f"{len(data.train)} training images is less than one --batch-size {recipe.batch_size}")
    run.data = data
    run.train = data.train.to(fabric.device)
    run.test = data.test.subset(shard(len(data.test), fabric.global_rank, fabric.world_size)).to(fabric.device)


def setup_model(run: Run) -> None:
    """The LightningModule, channels_last, set up by Fabric; the normalisation's constants on the device, once.
    `--compile` compiles the network in place (`nn.Module.compile`), so its parameters keep their plain names in
    checkpoints and in the released weights, and every path to it (training step, evaluation, LR range test) runs
    the compiled code."""
    from s10.model import S10Config
    from s10.module import S10Module, WeightAverage, short_average

    arch = S10Config(num_classes=len(run.data.classes), class_names=run.data.classes)
    with run.fabric.init_module():
        module = S10Module(arch, run.recipe, steps_per_epoch=len(run.train) // run.recipe.batch_size)
    run.module = module.to(memory_format=torch.channels_last)
    if run.args.compile:
        run.module.net.compile()
    run.model = run.fabric.setup_module(run.module)
    if run.recipe.ema_decay:
        run.ema = WeightAverage(run.net, run.recipe.ema_decay)  # on the device, beside the network
        short = short_average(run.recipe, len(run.train) // run.recipe.batch_size)
        if short:
            log.warning(short)
    run.mean, run.std = (torch.tensor(v, dtype=torch.float32, device=run.fabric.device) for v in (arch.mean, arch.std))


def setup_optimizer(run: Run) -> None:
    """The recipe's optimiser and LR schedule, from the recipe as it stands (its peak LR found by now)."""
    opt_config = run.module.configure_optimizers()
    run.optimizer = run.fabric.setup_optimizers(opt_config["optimizer"])
    run.scheduler = opt_config["lr_scheduler"]["scheduler"]


# -- LR range test ---------------------------------------------------------------------------------------------------


def find_lr(run: Run) -> float:
    """The LR range test on the run's own augmented batches, in lockstep on every rank; its suggestion. It restores
    the network, the optimizer and the precision's gradient scaler afterwards."""
    from s10 import plots
    from s10.data import augmented_batches
    from s10.lr_finder import SUGGESTION_RULE, lr_range_test

    fabric, recipe, t0 = run.fabric, run.recipe, time.perf_counter()
    log.info(f"LR range test: up to {recipe.lr_find_steps} steps")
    epochs = (augmented_batches(run.train, recipe.batch_size, fabric.global_rank, fabric.world_size, recipe.seed,
                                -1 - e, run.mean, run.std) for e in itertools.count())  # epochs -1, -2, ...
    batches = list(itertools.islice(itertools.chain.from_iterable(epochs), recipe.lr_find_steps))

    def step_loss(batch):
        with fabric.autocast():
            return run.model.training_step(batch, 0)["loss"]

    scaler = getattr(fabric.strategy.precision, "scaler", None)  # 16-mixed: the loss scale must not drift
    scaler_state = scaler.state_dict() if scaler is not None else None
    optimizer = fabric.setup_optimizers(run.module.configure_optimizers()["optimizer"])
    try:  # every rank sees the same averaged losses, so all of them fail together
        found = lr_range_test(step_loss, run.model, optimizer, batches, backward=fabric.backward,
                              reduce=lambda loss: fabric.all_reduce(loss, reduce_op="mean"),
                              num_steps=recipe.lr_find_steps)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if scaler is not None:
        scaler.load_state_dict(scaler_state)
    if fabric.is_global_zero:
        found.write_csv(run.out / "lr_finder.csv")
        plots.lr_finder(found, run.out / "lr_finder.png", SUGGESTION_RULE)
    log.info(f"LR range test: {len(found.lrs)} steps in {time.perf_counter() - t0:.0f} s, suggested peak LR "
             f"{found.suggestion:.3e} ({SUGGESTION_RULE})")
    return found.suggestion


# -- fit -------------------------------------------------------------------------------------------------------------


def train_epoch(run: Run, epoch: int) -> tuple[float, float]:
    """One epoch of optimizer steps; (the last step's LR, seconds). Nothing in a step reads a value back from the
    device, so on a GPU the host queues steps ahead of it (tests/test_devices.py checks it)."""
    from s10.data import augmented_batches

    fabric, recipe = run.fabric, run.recipe
    run.model.train()
    fabric.call("on_train_epoch_start", fabric=fabric, epoch=epoch, epochs=recipe.epochs,
                steps=len(run.train) // recipe.batch_size)
    t0 = time.perf_counter()
    batches = augmented_batches(run.train, recipe.batch_size, fabric.global_rank, fabric.world_size, recipe.seed,
                                epoch, run.mean, run.std, recipe.alternating_flip)
    for i, batch in enumerate(batches):
        step, lr = train_step(run, batch, i)
        if run.ema is not None and (i + 1) % recipe.ema_every == 0:  # counted within the epoch: resumable as is
            run.ema.update(run.net)
        fabric.call("on_train_batch_end", fabric=fabric, outputs=step, batch=batch, batch_idx=i, lr=lr)
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
    return lr, time.perf_counter() - t0


def train_step(run: Run, batch, i: int) -> tuple[dict, float]:
    """One optimizer step: training_step under the precision's autocast, backward, the optimiser's and the LR
    schedule's step; (its outputs, the LR it used, a Python float: no device read)."""
    with run.fabric.autocast():
        step = run.model.training_step(batch, i)
    run.optimizer.zero_grad(set_to_none=True)
    run.fabric.backward(step["loss"])
    run.optimizer.step()
    lr = run.optimizer.param_groups[0]["lr"]
    run.scheduler.step()
    return step, lr


def validate(run: Run) -> None:
    """This rank's share of the test set through validation_step, under the run's precision."""
    from s10.data import normalize

    fabric, test, per_rank = run.fabric, run.test, run.recipe.batch_size // run.fabric.world_size
    run.model.eval()
    fabric.call("on_validation_epoch_start")
    with torch.no_grad(), fabric.autocast():
        for i in range(0, len(test), per_rank):
            x = normalize(test.images[i:i + per_rank], run.mean, run.std).contiguous(memory_format=torch.channels_last)
            run.model.validation_step((x, test.labels[i:i + per_rank]), i)


def fit(run: Run) -> bool:
    """The epochs left to run; False if stopped early (--stop-after-epoch)."""
    fabric, recipe = run.fabric, run.recipe
    images = len(run.train) // recipe.batch_size * recipe.batch_size
    fabric.call("on_train_start", fabric=fabric, state=run.state())  # checkpoint at epoch 0: the found LR survives
    for epoch in range(run.epoch + 1, recipe.epochs + 1):
        # fabric.call reaches the callbacks and the LightningModule's own hooks (on_train_epoch_start, ...).
        lr, train_time = train_epoch(run, epoch)
        if run.ema is not None:
            run.ema.sync(fabric)
        validate(run)
        row = {"epoch": epoch, "lr": lr, **run.module.epoch_metrics(), "epoch_time_s": round(train_time, 3),
               "images_per_s": round(images / train_time, 1)}
        run.rows.append(row)
        fabric.log_dict(row, step=epoch)
        for logger in fabric.loggers:
            logger.save()
        run.epoch = epoch
        fabric.call("on_train_epoch_end", fabric=fabric, epoch=epoch, row=row, state=run.state())
        log.info(f"epoch {epoch:2d}/{recipe.epochs} lr {row['lr']:.2e} train loss {row['train_loss']:.4f} "
                 f"acc {row['train_acc']:.4f} | test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} | "
                 f"{train_time:.1f} s, {row['images_per_s']:.0f} img/s")
        if run.args.stop_after_epoch == epoch and epoch < recipe.epochs:
            log.info(f"stopping after epoch {epoch} (--stop-after-epoch)")
            return False
    return True


def resume(run: Run) -> None:
    """Load checkpoints/last.ckpt into the run: global rank 0 reads it and broadcasts it (RankZeroCheckpointIO), so
    nodes without a shared disk resume from the same state. The checkpoint carries the per-epoch rows; CSVLogger
    deletes an existing metrics.csv when it starts, so they are written back at once."""
    state = run.state()
    rest = run.fabric.load(run.checkpoint, state)
    torch.set_rng_state(state["rng"])
    run.epoch = state["epoch"]
    run.rows = rest.get("metrics") or state["metrics"] or record.read_metrics(run.out / "metrics.csv", run.epoch)
    for row in run.rows:
        run.fabric.log_dict(row, step=row["epoch"])
    if run.rows:
        for logger in run.fabric.loggers:
            logger.save()
    log.info(f"resumed {run.out} at epoch {run.epoch}/{run.recipe.epochs}")


def finish(run: Run) -> None:
    """Every rank predicts its share of the test set, rank 0 writes the run's record from all of it (s10/record.py,
    on CPU float32 copies). These figures are the published ones, so they are measured as users run the weights:
    in exact float32 (no TF32; `python -m s10.evaluate` and the app get the same), whatever the training precision."""
    from s10.distributed import gather_uneven
    from s10.evaluate import predict_logits

    fabric, net = run.fabric, run.published
    per_rank = run.recipe.batch_size // fabric.world_size
    net.eval()
    eager = net.forward  # as users run the weights; a --compile run's compiled __call__ would compile this pass anew
    logits = gather_uneven(fabric, predict_logits(eager, run.test.images, run.mean, run.std, per_rank))
    flipped = gather_uneven(fabric, predict_logits(eager, run.test.images, run.mean, run.std, per_rank, flip=True))
    held_out = None if run.val is None else gather_uneven(
        fabric, predict_logits(eager, run.val.images, run.mean, run.std, per_rank))
    if fabric.is_global_zero:
        from hub.card import write_model_card

        results = record.write_results(run, logits, (logits + flipped) / 2, held_out)
        write_model_card(run.out)
        log.info(f"final evaluation of the published weights (float32, {results['test_images']:,} test images): "
                 f"test accuracy {results['test_acc']:.4f}, flip TTA {results['test_acc_tta']:.4f}; wrote {run.out}")
    fabric.barrier()
    if run.args.push_to_hub and fabric.is_global_zero:
        from hub.push import PushError, push_run

        try:
            log.info(push_run(run.out, run.args.push_to_hub))
        except PushError as err:
            raise UsageError(f"{err} (the run is complete in {run.out}; retry with python -m hub.push "
                             f"{run.out})") from None


# -- main ------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    code = record.code_version(Path(__file__).parent)  # now, before the source can change under a long run
    args = parse_args(argv)
    from lightning.fabric.utilities.seed import seed_everything

    from s10.data import DataError, check_source

    # CSVLogger warns that the run folder is not empty: it holds the rest of the run, by design.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    if not hardware.launched_elsewhere():  # before Fabric starts processes; other launchers' ranks all check it together
        try:
            check_source(args.data)
        except DataError as err:
            raise UsageError(str(err)) from None
    fabric = build_fabric(args)
    record.check_batch_size(new_recipe(args).batch_size if not args.resume else args.batch_size, fabric.world_size)
    if not os.environ.get("LT_CLI_USED"):  # `fabric run` has started the processes already
        fabric.launch()
    recipe, saved, has_checkpoint = start_or_resume(fabric, args)
    record.check_batch_size(recipe.batch_size, fabric.world_size)  # a resumed run's own
    if fabric.is_global_zero:
        args.out.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    record.setup_logging(log, args.out, fabric.is_global_zero)
    if fabric.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest convolution once
    seed_everything(recipe.seed, verbose=False)
    if args.resume and saved is None:
        log.info(f"--resume: {args.out} holds no config yet (stopped before its LR range test finished); starting "
                 "from the beginning")
    run = Run(fabric, args, recipe, code, saved)
    load_data(run)
    setup_model(run)
    if args.find_lr and saved is None:  # a resumed run keeps the LR its range test found
        run.recipe.max_lr = find_lr(run)
    setup_optimizer(run)
    if has_checkpoint:
        resume(run)
    elif saved is not None:
        log.info(f"--resume: {args.out} has no checkpoint yet; starting its first epoch again with its recipe")
    if fabric.is_global_zero:
        config = record.write_config(run)
        log.info(f"S10 on {run.data.source}: {len(run.data.train)} train / {len(run.data.test)} test images, "
                 f"{fabric.world_size} x {fabric.device.type} on {config['num_nodes']} node(s), {args.precision}, "
                 f"batch {recipe.batch_size}, {recipe.epochs} epochs of {config['steps_per_epoch']} steps, peak LR "
                 f"{recipe.max_lr:.3e}")
    if fit(run):
        finish(run)
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except UsageError as err:
        print(f"fabric_train.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fabric_train.py: interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        leave()


if __name__ == "__main__":
    sys.exit(cli())
