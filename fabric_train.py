"""Train the S10 net on CIFAR-10 with the S10 recipe: a LightningModule run by a minimal Fabric loop.

    python fabric_train.py --data .data/cifar10 --out runs/s10 --find-lr             # one device (GPU if any)
    python fabric_train.py --data .data/cifar10 --out runs/s10 --resume              # continue a killed run
    python fabric_train.py --accelerator cpu --devices 2 --data ... --out ...        # 2 processes (DDP, gloo)
    fabric run --accelerator cuda --devices 4 fabric_train.py --data ... --out ...   # 4 GPUs

What changes versus plain PyTorch: Fabric places the model and data (no .to(device)), runs mixed precision
(`--precision`), launches and syncs the processes (DDP), and saves/loads the checkpoint. The data stays on the
device as uint8 and is augmented a batch at a time there (s10/data.py).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s"]
SMOKE_TRAIN_BATCHES = 3  # --smoke: global batches of training data per epoch
log = logging.getLogger("s10")


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        raise UsageError(message)


def parse_args(argv=None) -> argparse.Namespace:
    from s10.module import Recipe

    r = Recipe()
    p = Parser(prog="fabric_train.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="'cifar10' (torchvision download) or a class-folder root")
    p.add_argument("--out", required=True, type=Path, help="run folder (refused if it holds a run, unless --resume)")
    p.add_argument("--epochs", type=int, default=r.epochs, help=f"One Cycle length (default {r.epochs})")
    p.add_argument("--batch-size", type=int, default=r.batch_size, help=f"global batch (default {r.batch_size})")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--max-lr", type=float, help=f"One Cycle peak LR (default {r.max_lr:g})")
    lr.add_argument("--find-lr", action="store_true", help="take the peak LR from an LR range test first")
    p.add_argument("--lr-find-steps", type=int, default=100, help="steps of the LR range test (default 100)")
    p.add_argument("--weight-decay", type=float, default=r.weight_decay, help=f"Adam L2 (default {r.weight_decay:g})")
    p.add_argument("--label-smoothing", type=float, default=r.label_smoothing,
                   help=f"(default {r.label_smoothing:g})")
    p.add_argument("--precision", choices=PRECISIONS, help="default: bf16-mixed on a GPU with bf16, 16-mixed on "
                   "older GPUs, 32-true on a CPU")
    p.add_argument("--accelerator", default="auto", choices=ACCELERATORS)
    p.add_argument("--devices", default="auto", help="'auto', a count, or a comma list of GPU ids")
    p.add_argument("--strategy", default="auto", help="'auto', 'ddp', ... (Fabric strategies)")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.ckpt")
    p.add_argument("--smoke", action="store_true", help="a few batches of each split (for tests)")
    p.add_argument("--train-limit", type=int, help="train on a seeded random subset of this many images")
    p.add_argument("--test-limit", type=int, help="test on a seeded random subset of this many images")
    p.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--checkpoint", action=argparse.BooleanOptionalAction, default=True,
                   help="save checkpoints/last.ckpt every epoch (default on)")
    p.add_argument("--push-to-hub", metavar="USER/NAME", help="push model/ to this Hub model repo at the end")
    p.add_argument("--stop-after-epoch", type=int, help=argparse.SUPPRESS)  # tests: simulate a killed run
    args = p.parse_args(argv)
    if args.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_lr is not None and not args.max_lr > 0:
        raise UsageError(f"--max-lr must be positive, got {args.max_lr}")
    if args.num_nodes < 1:
        raise UsageError(f"--num-nodes must be at least 1, got {args.num_nodes}")
    return args


def parse_devices(value: str):
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--devices must be 'auto', a count or a comma list of ids, got {value!r}") from None


def default_precision(accelerator: str) -> str:
    if accelerator in ("cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_fabric(args, callbacks, loggers):
    from lightning.fabric import Fabric

    accelerator = args.accelerator
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    args.precision = args.precision or default_precision(accelerator)
    try:
        return Fabric(accelerator=args.accelerator, devices=parse_devices(args.devices), strategy=args.strategy,
                      num_nodes=args.num_nodes, precision=args.precision, callbacks=callbacks, loggers=loggers)
    except UsageError:
        raise
    except Exception as err:  # Fabric's MisconfigurationException / ValueError / RuntimeError on bad flags
        raise UsageError(str(err).splitlines()[0]) from None


def code_version() -> dict:
    """The commit the running code came from, read at start-up, and whether the tree had uncommitted changes."""
    def git(*cmd):
        try:
            proc = subprocess.run(["git", *cmd], capture_output=True, text=True, cwd=Path(__file__).parent,
                                  timeout=10)
            return proc.stdout.strip() if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(status) if status is not None else None}



def run_provenance(args, data, code: dict) -> dict:
    import lightning
    import torchmetrics
    import torchvision

    return {
        **code,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "lightning": lightning.__version__,
                     "torchmetrics": torchmetrics.__version__},
        "hardware": {"platform": platform.platform(), "cpu": cpu_name(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                     "cpu_threads": torch.get_num_threads()},
        "data": {"source": data.source, "classes": data.classes, "train_images": len(data.train),
                 "test_images": len(data.test), "exact_test_images": int(data.test.exact.sum())},
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def setup_logging(out: Path, rank_zero: bool) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if rank_zero:
        for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            log.addHandler(handler)


def read_metrics(path: Path, last_epoch: int) -> list[dict]:
    """The rows of an existing metrics.csv up to `last_epoch` (rows past the checkpoint are dropped)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(row[k]) for k in METRIC_COLUMNS} for row in csv.DictReader(f)]
    rows = [r for r in rows if int(r["epoch"]) <= last_epoch]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows


def gather_uneven(fabric, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's tensor (their lengths may differ by one) in rank order, on every rank."""
    if fabric.world_size == 1:
        return tensor
    sizes = fabric.all_gather(torch.tensor(len(tensor), device=tensor.device)).tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    gathered = fabric.all_gather(padded)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


def main(argv=None) -> int:
    code = code_version()  # now, before the source can change under a long run
    args = parse_args(argv)
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger
    from lightning.fabric.utilities.seed import seed_everything

    from s10 import plots
    from s10.callbacks import Checkpoint, ProgressBar
    from s10.data import DataError, augment, epoch_generator, load_dataset, normalize, shard, train_batches
    from s10.evaluate import predict_logits
    from s10.lr_finder import SUGGESTION_RULE, lr_range_test
    from s10.model import S10Config
    from s10.module import Recipe, S10Module

    # CSVLogger warns that the run folder is not empty: it holds the rest of the run, by design.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    out: Path = args.out
    ckpt_path = out / "checkpoints" / "last.ckpt"
    if args.resume:
        if not ckpt_path.is_file():
            raise UsageError(f"--resume: no checkpoint at {ckpt_path}")
        saved = json.loads((out / "config.json").read_text())
        recipe = Recipe(**saved["recipe"])  # the run's own recipe (its found peak LR included) wins on resume
        if args.epochs != recipe.epochs:
            raise UsageError(f"--resume: the run in {out} has --epochs {recipe.epochs}, not {args.epochs}")
    else:
        if (out / "config.json").exists() or ckpt_path.exists():
            raise UsageError(f"--out {out} already holds a run; pass --resume to continue it, or another --out")
        recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, max_lr=args.max_lr or Recipe.max_lr,
                        weight_decay=args.weight_decay, label_smoothing=args.label_smoothing, seed=args.seed)

    callbacks = ([ProgressBar()] if args.progress_bar else []) + ([Checkpoint(out / "checkpoints")]
                                                                  if args.checkpoint else [])
    loggers = [CSVLogger(root_dir=out, name="", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(root_dir=out, name="tensorboard", version=""))
    except ImportError:
        pass
    fabric = build_fabric(args, callbacks, loggers)
    if recipe.batch_size % fabric.world_size:
        raise UsageError(f"--batch-size {recipe.batch_size} is not divisible by the {fabric.world_size} devices")
    try:
        data = load_dataset(args.data)
    except DataError as err:
        raise UsageError(str(err)) from None

    if not os.environ.get("LT_CLI_USED"):  # `fabric run` has started the processes already
        fabric.launch()
    rank, world = fabric.global_rank, fabric.world_size
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    setup_logging(out, fabric.is_global_zero)
    seed_everything(recipe.seed, verbose=False)

    # Subsets are seeded and taken on every rank alike, before the data moves to the device.
    pick = torch.Generator().manual_seed(recipe.seed)
    train_limit = SMOKE_TRAIN_BATCHES * recipe.batch_size if args.smoke else args.train_limit
    test_limit = 2 * recipe.batch_size + 1 if args.smoke else args.test_limit  # odd: uneven shards get exercised
    if train_limit and train_limit < len(data.train):
        data.train = data.train.subset(torch.randperm(len(data.train), generator=pick)[:train_limit].sort().values)
    if test_limit and test_limit < len(data.test):
        data.test = data.test.subset(torch.randperm(len(data.test), generator=pick)[:test_limit].sort().values)
    steps = len(data.train) // recipe.batch_size
    if steps == 0:
        raise UsageError(f"{len(data.train)} training images is less than one --batch-size {recipe.batch_size}")

    arch = S10Config(num_classes=len(data.classes), class_names=data.classes)
    train = data.train.to(fabric.device)
    test_part = shard(len(data.test), rank, world)
    test = data.test.subset(test_part).to(fabric.device)
    per_rank = recipe.batch_size // world

    with fabric.init_module():
        module = S10Module(arch, recipe, steps_per_epoch=steps)
    module = module.to(memory_format=torch.channels_last)
    mean, std = arch.mean, arch.std

    def batches_on_device(epoch: int):
        g = epoch_generator(recipe.seed, epoch, fabric.device)
        for images, labels in train_batches(train, recipe.batch_size, rank, world, g):
            yield augment(images, mean, std, g).contiguous(memory_format=torch.channels_last), labels

    model = fabric.setup_module(module)

    if args.find_lr and not args.resume:
        sweep_optimizer = fabric.setup_optimizers(module.configure_optimizers()["optimizer"])
        sweep_batches = []
        epoch = 0
        while len(sweep_batches) < args.lr_find_steps:
            sweep_batches += list(batches_on_device(-1 - epoch))
            epoch += 1
        found = lr_range_test(lambda batch: model.training_step(batch, 0)["loss"], model, sweep_optimizer,
                              sweep_batches[: args.lr_find_steps], backward=fabric.backward,
                              num_steps=args.lr_find_steps)
        del sweep_batches
        recipe.max_lr = found.suggestion
        if fabric.is_global_zero:
            found.write_csv(out / "lr_finder.csv")
            plots.lr_finder(found, out / "lr_finder.png", SUGGESTION_RULE)
        log.info(f"LR range test: {len(found.lrs)} steps, suggested peak LR {found.suggestion:.3e} "
                 f"({SUGGESTION_RULE})")

    opt_config = module.configure_optimizers()
    optimizer = fabric.setup_optimizers(opt_config["optimizer"])
    scheduler = opt_config["lr_scheduler"]["scheduler"]
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": 0,
             "rng": torch.get_rng_state(), "recipe": asdict(recipe)}

    start_epoch, rows = 0, []
    if args.resume:
        rest = fabric.load(ckpt_path, state)
        torch.set_rng_state(state["rng"])
        start_epoch = state["epoch"]
        # The checkpoint carries the per-epoch rows; metrics.csv is only read for checkpoints written before it did.
        rows = rest.get("metrics") or read_metrics(out / "metrics.csv", start_epoch)
        log.info(f"resumed {out} at epoch {start_epoch}/{recipe.epochs}")
    state["metrics"] = rows
    for row in rows:  # CSVLogger deletes an existing metrics.csv when it starts: write the kept rows back at once
        fabric.log_dict(row, step=row["epoch"])
    if rows:
        for logger in fabric.loggers:
            logger.save()
    if fabric.is_global_zero:
        flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        config = {"args": flags, "recipe": asdict(recipe), "arch": asdict(arch), "world_size": world,
                  "steps_per_epoch": steps, **run_provenance(args, data, code)}
        if args.resume:  # keep the run's original flags and provenance; record each resume beside them
            config = saved
            config.setdefault("resumes", []).append({"from_epoch": start_epoch, "args": flags, "world_size": world,
                                                     **run_provenance(args, data, code)})
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if not args.resume:
            log.info(f"S10 on {data.source}: {len(data.train)} train / {len(data.test)} test images, "
                     f"{world} x {fabric.device.type}, {args.precision}, batch {recipe.batch_size}, "
                     f"{recipe.epochs} epochs of {steps} steps, peak LR {recipe.max_lr:.3e}")

    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        # fabric.call reaches the callbacks and the LightningModule's own hooks (on_train_epoch_start, ...).
        model.train()
        fabric.call("on_train_epoch_start", fabric=fabric, epoch=epoch, epochs=recipe.epochs, steps=steps)
        t0 = time.perf_counter()
        for i, batch in enumerate(batches_on_device(epoch)):
            step = model.training_step(batch, i)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(step["loss"])
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the LR this step used
            scheduler.step()
            fabric.call("on_train_batch_end", fabric=fabric, outputs=step, batch=batch, batch_idx=i, lr=lr)
        if fabric.device.type == "cuda":
            torch.cuda.synchronize()
        train_time = time.perf_counter() - t0

        model.eval()
        fabric.call("on_validation_epoch_start")
        with torch.no_grad():
            for i in range(0, len(test), per_rank):
                x = test.images[i:i + per_rank]
                x = normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
                model.validation_step((x, test.labels[i:i + per_rank]), i)
        row = {"epoch": epoch, "lr": lr, **module.epoch_metrics(),
               "epoch_time_s": round(train_time, 3), "images_per_s": round(steps * recipe.batch_size / train_time, 1)}
        rows.append(row)
        fabric.log_dict(row, step=epoch)
        for logger in fabric.loggers:
            logger.save()
        state["epoch"], state["rng"] = epoch, torch.get_rng_state()
        fabric.call("on_train_epoch_end", fabric=fabric, epoch=epoch, row=row, state=state)
        log.info(f"epoch {epoch:2d}/{recipe.epochs} lr {row['lr']:.2e} train loss {row['train_loss']:.4f} "
                 f"acc {row['train_acc']:.4f} | test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f} | "
                 f"{train_time:.1f} s, {row['images_per_s']:.0f} img/s")
        if args.stop_after_epoch == epoch and epoch < recipe.epochs:
            log.info(f"stopping after epoch {epoch} (--stop-after-epoch)")
            return 0

    # Final evaluation: every rank predicts its share of the test set, every figure comes from all of it.
    net = module.model
    logits = gather_uneven(fabric, predict_logits(net, test.images, mean, std, per_rank))
    logits_tta = (logits + gather_uneven(fabric, predict_logits(net, test.images, mean, std, per_rank, flip=True))) / 2
    if fabric.is_global_zero:
        write_results(out, rows, data, net, logits, logits_tta, recipe, module.lr_schedule())
    fabric.barrier()
    if args.push_to_hub and fabric.is_global_zero:
        from hub.push import PushError, push_run

        try:
            log.info(push_run(out, args.push_to_hub))
        except PushError as err:
            raise UsageError(f"{err} (the run is complete in {out}; retry with python -m hub.push {out})") from None
    return 0


def write_results(out: Path, rows, data, net, logits, logits_tta, recipe, schedule) -> dict:
    """Rank 0: results.json, per_class.csv, the plots, and model/ (weights, config with results, misclassified
    pack, model card)."""
    from s10 import plots
    from s10.evaluate import misclassified, save_misclassified, test_results

    results = test_results(logits, logits_tta, data.test, data.classes)
    results["epochs"] = len(rows)
    results["peak_lr"] = recipe.max_lr
    results["train_time_s"] = round(sum(r["epoch_time_s"] for r in rows), 1)
    results["final_train_acc"] = round(rows[-1]["train_acc"], 6)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "per_class.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "test_images", "test_acc"])
        counts = torch.bincount(data.test.labels, minlength=len(data.classes)).tolist()
        for c, n in zip(data.classes, counts):
            writer.writerow([c, n, f"{results['per_class_acc'][c]:.4f}"])
    plots.curves(rows, out / "curves.png", schedule)
    plots.confusion_matrix(results["confusion_matrix"], data.classes, out / "confusion_matrix.png")
    pack = misclassified(logits, data.test)
    names = data.classes
    plots.misclassified_grid(pack["images"][:10], [plots.caption(names[t], names[p], c) for t, p, c in
                                                  zip(pack["true"][:10], pack["pred"][:10], pack["confidence"][:10])],
                             out / "misclassified.png")

    model_dir = out / "model"
    net.config.results = headline(results)
    net.cpu().to(memory_format=torch.contiguous_format).save_pretrained(model_dir)
    save_misclassified(pack, names, model_dir)
    try:
        from hub.card import write_model_card

        write_model_card(out)
    except ImportError:
        pass  # the Space bundle ships without hub/; training always has it
    log.info("test accuracy {:.4f} (flip TTA {:.4f}){}; wrote {}".format(
        results["test_acc"], results["test_acc_tta"],
        f", exact subset {results['exact_test_acc']:.4f}" if "exact_test_acc" in results else "", out))
    return results


def headline(results: dict) -> dict:
    """The figures that travel in model/config.json."""
    keys = ["test_acc", "test_acc_tta", "test_images", "exact_test_acc", "exact_test_acc_tta", "exact_images",
            "epochs", "per_class_acc"]
    return {k: results[k] for k in keys if k in results}


def cli(argv=None) -> int:
    try:
        return main(argv)
    except UsageError as err:
        print(f"fabric_train.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fabric_train.py: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
