"""Train the S10 net on CIFAR-10 with the S10 recipe: a LightningModule run by a minimal Fabric loop.

    python fabric_train.py --data .data/cifar10 --out runs/s10 --find-lr             # one device (GPU if any)
    python fabric_train.py --data .data/cifar10 --out runs/s10 --resume              # continue a killed run
    python fabric_train.py --accelerator cpu --devices 2 --data ... --out ...        # 2 processes (DDP, gloo)
    fabric run --accelerator cuda --devices 4 fabric_train.py --data ... --out ...   # 4 GPUs

Measured (bench/train_throughput.py, 2026-11-25): on 2 cores of an AMD EPYC (Zen 4, AVX512-BF16) a training step runs
at 183 images/s in bf16-mixed (this CPU's default) and 91 images/s in 32-true, 89 % and 88 % of the cores' peak;
about 6 minutes an epoch. The release run's accuracy and wall time are in README.md and release/.

What changes versus plain PyTorch: Fabric places the model and data (no .to(device)), runs every forward pass under
the precision's autocast (`--precision`), launches and syncs the processes (DDP), and saves/loads the checkpoint.
The data stays on the device as uint8 and is augmented a batch at a time there (s10/data.py).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import torch

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu", "mps")
METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_time_s", "images_per_s"]
SMOKE_TRAIN_BATCHES = 3  # --smoke: global batches of training data per epoch
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic
log = logging.getLogger("s10")


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + error
        raise UsageError(message)


# -- arguments -------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    """The run's flags. Every field of `Recipe` is an option (`max_lr` -> `--max-lr`) with the field's default and
    help; an option left out is None here, so a resumed run can tell it from one that was given."""
    from s10.module import Recipe

    p = Parser(prog="fabric_train.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="'cifar10' (torchvision download) or a class-folder root")
    p.add_argument("--out", required=True, type=Path, help="run folder (refused if it holds a run, unless --resume)")
    lr = p.add_mutually_exclusive_group()
    lr.add_argument("--find-lr", action="store_true", help="take the peak LR from an LR range test first")
    for f in fields(Recipe):
        group = lr if f.name == "max_lr" else p
        group.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                           help=f"{f.metadata['help']} (default {f.default:g})")
    p.add_argument("--precision", choices=PRECISIONS, help="default: bf16-mixed where the device has native bf16, "
                   "else 16-mixed on a GPU and 32-true on a CPU (see README: Precision)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (first steps are slower)")
    p.add_argument("--accelerator", default="auto", choices=ACCELERATORS)
    p.add_argument("--devices", default="auto", help="'auto', a count, or a comma list of GPU ids")
    p.add_argument("--strategy", default="auto", help="'auto', 'ddp', ... (Fabric strategies)")
    p.add_argument("--num-nodes", type=int, default=1)
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
    if args.num_nodes < 1:
        raise UsageError(f"--num-nodes must be at least 1, got {args.num_nodes}")
    return args


def recipe_flags(args) -> dict:
    from s10.module import Recipe

    return {f.name: getattr(args, f.name) for f in fields(Recipe) if getattr(args, f.name) is not None}


def start_or_resume(args):
    """The run's recipe and, on --resume, its saved config. A resumed run keeps its own recipe (its found peak LR
    included) and precision; a recipe flag that contradicts them is refused."""
    from s10.module import Recipe

    out, ckpt = args.out, args.out / "checkpoints" / "last.ckpt"
    if not args.resume:
        if (out / "config.json").exists() or ckpt.exists():
            raise UsageError(f"--out {out} already holds a run; pass --resume to continue it, or another --out")
        try:
            return Recipe(**recipe_flags(args)), None
        except ValueError as err:  # "batch_size must be ..." -> "--batch-size must be ..."
            name, rest = str(err).split(" ", 1)
            raise UsageError(f"--{name.replace('_', '-')} {rest}") from None
    if not ckpt.is_file():
        raise UsageError(f"--resume: no checkpoint at {ckpt}")
    saved = json.loads((out / "config.json").read_text())
    recipe = Recipe(**saved["recipe"])
    for name, value in recipe_flags(args).items():
        if value != getattr(recipe, name):
            raise UsageError(f"--resume: the run in {out} has --{name.replace('_', '-')} {getattr(recipe, name)}, "
                             f"not {value}")
    args.precision = args.precision or saved["args"]["precision"]
    return recipe, saved


# -- Fabric ----------------------------------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def default_precision(device_type: str) -> str:
    """bf16-mixed where the device computes in bf16 natively, else 16-mixed on a GPU and 32-true on a CPU.

    GPU: `is_bf16_supported(including_emulation=False)` (Ampere and newer); a T4 or V100 only emulates bf16 and gets
    16-mixed. CPU: native bf16 means AVX512-BF16 or AMX; there bf16 autocast runs an S10 step about 2x faster than
    float32 (bench/train_throughput.py), while on a CPU without it, it runs many times slower."""
    if device_type == "cuda":
        return "bf16-mixed" if torch.cuda.is_bf16_supported(including_emulation=False) else "16-mixed"
    if device_type == "cpu":
        return "bf16-mixed" if cpu_flags() & set(CPU_BF16_FLAGS) else "32-true"
    return "32-true"


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


def build_fabric(args):
    """Fabric with the run's callbacks (switched on or off by flags) and loggers; the precision resolved here."""
    from lightning.fabric import Fabric
    from lightning.fabric.loggers import CSVLogger, TensorBoardLogger

    from s10.callbacks import Checkpoint, ProgressBar

    callbacks = [ProgressBar()] if args.progress_bar else []
    if args.checkpoint:
        callbacks.append(Checkpoint(args.out / "checkpoints"))
    loggers = [CSVLogger(root_dir=args.out, name="", version="")]
    try:
        import tensorboard  # noqa: F401

        loggers.append(TensorBoardLogger(root_dir=args.out, name="tensorboard", version=""))
    except ImportError:
        pass
    devices = parse_devices(args.devices)
    # Fabric announces the precision on stderr before the flags are all checked; the run's log states it instead.
    for name in ("lightning.fabric", "lightning.pytorch"):  # rank_zero_info logs to one of them
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        fabric = Fabric(accelerator=args.accelerator, devices=devices, strategy=args.strategy, num_nodes=args.num_nodes,
                        precision=args.precision or "32-true", callbacks=callbacks, loggers=loggers)
        if args.precision is None:  # the device is known only now
            args.precision = default_precision(fabric.device.type)
            fabric = Fabric(accelerator=args.accelerator, devices=devices, strategy=args.strategy,
                            num_nodes=args.num_nodes, precision=args.precision, callbacks=callbacks, loggers=loggers)
    except Exception as err:  # Fabric's MisconfigurationException / ValueError / RuntimeError on bad flags
        raise UsageError(str(err).splitlines()[0]) from None
    return fabric


# -- data and model --------------------------------------------------------------------------------------------------


def load_data(fabric, args, recipe):
    """Rank 0 loads (downloads, decodes, caches) first, the other ranks then read its cache; every rank takes the
    same seeded subsets. A data error stops every rank with rank 0's message."""
    from s10.data import DataError, load_dataset

    data, error = None, None
    with fabric.rank_zero_first():
        try:
            data = load_dataset(args.data)
        except DataError as err:
            error = str(err)
    error = fabric.broadcast(error)
    if error:
        raise UsageError(error)
    pick = torch.Generator().manual_seed(recipe.seed)
    train_limit = SMOKE_TRAIN_BATCHES * recipe.batch_size if args.smoke else args.train_limit
    test_limit = 2 * recipe.batch_size + 1 if args.smoke else args.test_limit  # odd: uneven shards get exercised
    if train_limit and train_limit < len(data.train):
        data.train = data.train.subset(torch.randperm(len(data.train), generator=pick)[:train_limit].sort().values)
    if test_limit and test_limit < len(data.test):
        data.test = data.test.subset(torch.randperm(len(data.test), generator=pick)[:test_limit].sort().values)
    if len(data.train) < recipe.batch_size:
        raise UsageError(f"{len(data.train)} training images is less than one --batch-size {recipe.batch_size}")
    return data


def setup_model(fabric, args, data, recipe):
    """The LightningModule, channels_last, set up by Fabric. `--compile` compiles the network in place
    (`nn.Module.compile`), so its parameters keep their plain names in checkpoints and in the released weights,
    and every path to it (training step, evaluation, LR range test) runs the compiled code."""
    from s10.model import S10Config
    from s10.module import S10Module

    arch = S10Config(num_classes=len(data.classes), class_names=data.classes)
    with fabric.init_module():
        module = S10Module(arch, recipe, steps_per_epoch=len(data.train) // recipe.batch_size)
    module = module.to(memory_format=torch.channels_last)
    if args.compile:
        module.model.compile()
    return module, fabric.setup_module(module)


# -- LR range test ---------------------------------------------------------------------------------------------------


def find_lr(fabric, model, module, train, recipe, out: Path) -> float:
    """The LR range test on the run's own augmented batches, in lockstep on every rank; its suggestion."""
    from s10 import plots
    from s10.data import augmented_batches
    from s10.lr_finder import SUGGESTION_RULE, lr_range_test

    cfg, t0 = module.model.config, time.perf_counter()
    epochs = (augmented_batches(train, recipe.batch_size, fabric.global_rank, fabric.world_size, recipe.seed,
                                -1 - e, cfg.mean, cfg.std) for e in itertools.count())  # epochs -1, -2, ...
    batches = list(itertools.islice(itertools.chain.from_iterable(epochs), recipe.lr_find_steps))

    def step_loss(batch):
        with fabric.autocast():
            return model.training_step(batch, 0)["loss"]

    optimizer = fabric.setup_optimizers(module.configure_optimizers()["optimizer"])
    found = lr_range_test(step_loss, model, optimizer, batches, backward=fabric.backward,
                          reduce=lambda loss: fabric.all_reduce(loss, reduce_op="mean"),
                          num_steps=recipe.lr_find_steps)
    if fabric.is_global_zero:
        found.write_csv(out / "lr_finder.csv")
        plots.lr_finder(found, out / "lr_finder.png", SUGGESTION_RULE)
    log.info(f"LR range test: {len(found.lrs)} steps in {time.perf_counter() - t0:.0f} s, suggested peak LR "
             f"{found.suggestion:.3e} ({SUGGESTION_RULE})")
    return found.suggestion


# -- fit -------------------------------------------------------------------------------------------------------------


def train_epoch(fabric, model, optimizer, scheduler, train, recipe, epoch: int) -> tuple[float, float]:
    """One epoch of optimizer steps; (the last step's LR, seconds)."""
    from s10.data import augmented_batches

    cfg = model.model.config
    model.train()
    fabric.call("on_train_epoch_start", fabric=fabric, epoch=epoch, epochs=recipe.epochs,
                steps=len(train) // recipe.batch_size)
    t0 = time.perf_counter()
    batches = augmented_batches(train, recipe.batch_size, fabric.global_rank, fabric.world_size, recipe.seed, epoch,
                                cfg.mean, cfg.std)
    for i, batch in enumerate(batches):
        with fabric.autocast():
            step = model.training_step(batch, i)
        optimizer.zero_grad(set_to_none=True)
        fabric.backward(step["loss"])
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used
        scheduler.step()
        fabric.call("on_train_batch_end", fabric=fabric, outputs=step, batch=batch, batch_idx=i, lr=lr)
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
    return lr, time.perf_counter() - t0


def validate(fabric, model, test, per_rank: int) -> None:
    """This rank's share of the test set through validation_step, under the run's precision."""
    from s10.data import normalize

    cfg = model.model.config
    model.eval()
    fabric.call("on_validation_epoch_start")
    with torch.no_grad(), fabric.autocast():
        for i in range(0, len(test), per_rank):
            x = normalize(test.images[i:i + per_rank], cfg.mean, cfg.std).contiguous(memory_format=torch.channels_last)
            model.validation_step((x, test.labels[i:i + per_rank]), i)


def fit(fabric, args, model, module, optimizer, scheduler, train, test, recipe, state) -> bool:
    """The epochs left to run; False if stopped early (--stop-after-epoch)."""
    rows, per_rank, steps = state["metrics"], recipe.batch_size // fabric.world_size, len(train) // recipe.batch_size
    for epoch in range(state["epoch"] + 1, recipe.epochs + 1):
        # fabric.call reaches the callbacks and the LightningModule's own hooks (on_train_epoch_start, ...).
        lr, train_time = train_epoch(fabric, model, optimizer, scheduler, train, recipe, epoch)
        validate(fabric, model, test, per_rank)
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
            return False
    return True


# -- final evaluation and files --------------------------------------------------------------------------------------


def gather_uneven(fabric, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate each rank's tensor (their lengths may differ by one) in rank order, on every rank."""
    if fabric.world_size == 1:
        return tensor
    sizes = fabric.all_gather(torch.tensor(len(tensor), device=tensor.device)).tolist()
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    gathered = fabric.all_gather(padded)
    return torch.cat([gathered[r, :n] for r, n in enumerate(sizes)])


def finish(fabric, args, module, data, test, recipe, rows) -> None:
    """Every rank predicts its share of the test set, rank 0 writes the results from all of it. These figures are
    the published ones, so they are measured as users run the weights: in float32 (`python -m s10.evaluate` and
    the app get the same), whatever the training precision."""
    from s10.evaluate import predict_logits, write_results

    net, cfg, per_rank = module.model, module.model.config, recipe.batch_size // fabric.world_size
    net.eval()
    logits = gather_uneven(fabric, predict_logits(net, test.images, cfg.mean, cfg.std, per_rank))
    flipped = gather_uneven(fabric, predict_logits(net, test.images, cfg.mean, cfg.std, per_rank, flip=True))
    if fabric.is_global_zero:
        results = write_results(args.out, rows, data, net, logits, (logits + flipped) / 2, recipe,
                                module.lr_schedule())
        log.info(f"final evaluation of the published weights (float32, {results['test_images']:,} test images): "
                 f"test accuracy {results['test_acc']:.4f}, flip TTA {results['test_acc_tta']:.4f}; wrote {args.out}")
    fabric.barrier()
    if args.push_to_hub and fabric.is_global_zero:
        from hub.push import PushError, push_run

        try:
            log.info(push_run(args.out, args.push_to_hub))
        except PushError as err:
            raise UsageError(f"{err} (the run is complete in {args.out}; retry with python -m hub.push "
                             f"{args.out})") from None


# -- provenance ------------------------------------------------------------------------------------------------------


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


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_provenance(data, code: dict) -> dict:
    import lightning
    import torchmetrics
    import torchvision

    flags = cpu_flags()
    return {
        **code,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__, "lightning": lightning.__version__,
                     "torchmetrics": torchmetrics.__version__},
        "hardware": {"platform": platform.platform(), "cpu": cpu_name(), "cpu_threads": torch.get_num_threads(),
                     "cpu_bf16": sorted(flags & set(CPU_BF16_FLAGS)), "cpu_avx512": "avx512f" in flags,
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "data": {"source": data.source, "classes": data.classes, "train_images": len(data.train),
                 "test_images": len(data.test)},
    }


def write_config(fabric, args, recipe, arch, data, code, saved, start_epoch: int) -> None:
    """Rank 0: config.json. A resume keeps the run's original flags and provenance and records itself beside them."""
    if not fabric.is_global_zero:
        return
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    world = fabric.world_size
    if saved is None:
        config = {"args": flags, "recipe": asdict(recipe), "arch": asdict(arch), "world_size": world,
                  "steps_per_epoch": len(data.train) // recipe.batch_size, **run_provenance(data, code)}
        log.info(f"S10 on {data.source}: {len(data.train)} train / {len(data.test)} test images, "
                 f"{world} x {fabric.device.type}, {args.precision}, batch {recipe.batch_size}, "
                 f"{recipe.epochs} epochs of {config['steps_per_epoch']} steps, peak LR {recipe.max_lr:.3e}")
    else:
        config = saved
        config["recipe"] = asdict(recipe)
        config.setdefault("resumes", []).append({"from_epoch": start_epoch, "args": flags, "world_size": world,
                                                 **run_provenance(data, code)})
    (args.out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def setup_logging(out: Path, rank_zero: bool) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if rank_zero:
        for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stdout)):
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            log.addHandler(handler)


def read_metrics(path: Path, last_epoch: int) -> list[dict]:
    """The rows of an existing metrics.csv up to `last_epoch` (for checkpoints that do not carry them)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [{k: float(row[k]) for k in METRIC_COLUMNS} for row in csv.DictReader(f)]
    rows = [r for r in rows if int(r["epoch"]) <= last_epoch]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows


# -- main ------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    code = code_version()  # now, before the source can change under a long run
    args = parse_args(argv)
    from lightning.fabric.utilities.seed import seed_everything

    from s10.data import DataError, check_source, shard

    # CSVLogger warns that the run folder is not empty: it holds the rest of the run, by design.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    recipe, saved = start_or_resume(args)
    try:
        check_source(args.data)  # before Fabric starts processes or prints anything
    except DataError as err:
        raise UsageError(str(err)) from None
    fabric = build_fabric(args)
    if recipe.batch_size % fabric.world_size:
        raise UsageError(f"--batch-size {recipe.batch_size} is not divisible by the {fabric.world_size} devices")
    if not os.environ.get("LT_CLI_USED"):  # `fabric run` has started the processes already
        fabric.launch()
    if fabric.is_global_zero:
        args.out.mkdir(parents=True, exist_ok=True)
    fabric.barrier()
    setup_logging(args.out, fabric.is_global_zero)
    if fabric.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest convolution once
    seed_everything(recipe.seed, verbose=False)

    data = load_data(fabric, args, recipe)
    train = data.train.to(fabric.device)
    test = data.test.subset(shard(len(data.test), fabric.global_rank, fabric.world_size)).to(fabric.device)
    module, model = setup_model(fabric, args, data, recipe)
    if args.find_lr and not args.resume:
        recipe.max_lr = find_lr(fabric, model, module, train, recipe, args.out)

    opt_config = module.configure_optimizers()
    optimizer = fabric.setup_optimizers(opt_config["optimizer"])
    scheduler = opt_config["lr_scheduler"]["scheduler"]
    state = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": 0,
             "rng": torch.get_rng_state(), "recipe": asdict(recipe), "metrics": []}
    if args.resume:
        resume(fabric, args, state)
    write_config(fabric, args, recipe, module.model.config, data, code, saved, state["epoch"])

    if fit(fabric, args, model, module, optimizer, scheduler, train, test, recipe, state):
        finish(fabric, args, module, data, test, recipe, state["metrics"])
    return 0


def resume(fabric, args, state: dict) -> None:
    """Load checkpoints/last.ckpt into `state`. The checkpoint carries the per-epoch rows; CSVLogger deletes an
    existing metrics.csv when it starts, so they are written back at once."""
    rest = fabric.load(args.out / "checkpoints" / "last.ckpt", state)
    torch.set_rng_state(state["rng"])
    state["metrics"] = rest.get("metrics") or state["metrics"] or read_metrics(args.out / "metrics.csv",
                                                                                state["epoch"])
    for row in state["metrics"]:
        fabric.log_dict(row, step=row["epoch"])
    if state["metrics"]:
        for logger in fabric.loggers:
            logger.save()
    log.info(f"resumed {args.out} at epoch {state['epoch']}/{state['recipe']['epochs']}")


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
