"""`--compile` against eager: the trainer's own epoch loop (fabric_train.train_epoch) on the same batches, one
process, rounds alternating between the two, the median of each; and how exact the compiled network is.

    python bench/compile_speed.py --data .data/cifar10                          # this device's default precision
    python bench/compile_speed.py --data .data/cifar10 --precision 32-true bf16-mixed --steps 8 --rounds 3

Exactness: both networks start from the same weights; one training batch's loss and every gradient, of the eager
and of the compiled one, against the same step in float64 (relative error: the norm of the difference over the norm
of the float64 value; the worst parameter is named). Inductor fuses batch norm, ReLU and the casts between the
convolutions and reorders sums, so the compiled errors differ from the eager ones; errors of the same order as
eager float32's are rounding, far above them a wrong kernel.

Measured figures and the hardware: docs/speed.md ("torch.compile"), written by bench/render.py from
bench/results/compile_speed.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s10 import hardware  # noqa: E402


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm().clamp_min(1e-30))


def main() -> None:
    from lightning.fabric import Fabric

    import fabric_train
    from s10.data import augmented_batches, load_dataset
    from s10.model import CIFAR10_MEAN, CIFAR10_STD
    from s10.module import Recipe, S10Module

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".data/cifar10")
    p.add_argument("--precision", nargs="+", choices=fabric_train.PRECISIONS,
                   help="default: the device's default precision (s10.hardware.default_precision)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=6, help="timed training steps per loop and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the results here (bench/results/compile_speed.json)")
    args = p.parse_args()
    accelerator = args.accelerator if args.accelerator != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    precisions = args.precision or [hardware.default_precision(accelerator)]
    info = hardware.cpu()
    device_name = torch.cuda.get_device_name(0) if accelerator == "cuda" else f"CPU {info.name}"
    print(f"{device_name}; torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds")
    data = load_dataset(args.data)
    rows = []
    for precision in precisions:
        fabric = Fabric(accelerator=accelerator, devices=1, precision=precision)
        train = data.train.to(fabric.device)
        mean, std = (torch.tensor(v, device=fabric.device) for v in (CIFAR10_MEAN, CIFAR10_STD))
        recipe = Recipe(epochs=1000, batch_size=args.batch_size)  # a long schedule: never runs off its end
        torch.manual_seed(0)
        eager = S10Module(recipe=recipe, steps_per_epoch=args.steps).to(memory_format=torch.channels_last)
        compiled = copy.deepcopy(eager)
        compiled.net.compile()
        loops = {}
        for name, module in (("eager", eager), ("compiled", compiled)):
            optimizer = module.configure_optimizers()
            model, opt = fabric.setup(module, optimizer["optimizer"])
            loops[name] = (module, model, opt, optimizer["lr_scheduler"]["scheduler"])

        # Exactness, before any step: the same batch through both and through a float64 copy.
        x, y = next(augmented_batches(train, args.batch_size, 0, 1, 0, 0, mean, std))
        reference = copy.deepcopy(eager).double().train()
        loss = reference.training_step((x.double(), y), 0)["loss"]
        loss.backward()
        want = {"loss": loss.detach(), **{n: q.grad.detach() for n, q in reference.named_parameters()}}
        errors = {}
        for name, (module, model, _, _) in loops.items():
            model.train()
            with fabric.autocast():
                loss = model.training_step((x, y), 0)["loss"]
            module.zero_grad(set_to_none=True)
            fabric.backward(loss)
            got = {"loss": loss.detach(), **{n: q.grad.detach().clone() for n, q in module.named_parameters()}}
            module.zero_grad(set_to_none=True)
            grad = {n: relative_error(got[n], want[n]) for n in want if n != "loss"}
            worst = max(grad, key=grad.get)
            errors[name] = {"loss": relative_error(got["loss"], want["loss"]), "grad_median": float(np.median(
                list(grad.values()))), "grad_worst": grad[worst], "grad_worst_param": worst}
            print(f"{precision} {name} vs float64 on one batch: loss rel. error {errors[name]['loss']:.1e}, "
                  f"gradients median {errors[name]['grad_median']:.1e}, worst {grad[worst]:.1e} ({worst})")

        def epoch(name: str, part, e: int) -> float:
            module, model, opt, scheduler = loops[name]
            run = fabric_train.Run(fabric, args, recipe, code={}, train=part, module=module, model=model,
                                   optimizer=opt, scheduler=scheduler, mean=mean, std=std)
            return len(part) // args.batch_size * args.batch_size / fabric_train.train_epoch(run, e)[1]

        subset = train.subset(torch.arange(args.steps * args.batch_size, device=fabric.device))
        warm = train.subset(torch.arange(2 * args.batch_size, device=fabric.device))
        t0 = time.perf_counter()
        epoch("compiled", warm, 0)  # compilation (forward and backward graphs) happens here
        compile_s = time.perf_counter() - t0
        epoch("eager", warm, 0)
        rates = {"eager": [], "compiled": []}
        for r in range(args.rounds):
            for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager")):
                rates[name].append(epoch(name, subset, r + 1))
            print(f"  round {r + 1}: eager {rates['eager'][-1]:.1f} img/s, compiled {rates['compiled'][-1]:.1f} img/s")
        e, c = float(np.median(rates["eager"])), float(np.median(rates["compiled"]))
        print(f"{precision}: eager {e:.1f} img/s, compiled {c:.1f} img/s -> compiled / eager {c / e:.2f}x "
              f"(first compiled steps: {compile_s:.0f} s)")
        rows.append({"precision": precision, "eager": round(e, 1), "compiled": round(c, 1), "ratio": round(c / e, 2),
                     "compile_s": round(compile_s, 1), "errors_vs_float64": {
                         k: {m: float(f"{v:.2e}") if isinstance(v, float) else v for m, v in e.items()}
                         for k, e in errors.items()}})
    if args.json:
        # One entry per machine (the newest run of each): a file measured on another CPU keeps that CPU's row.
        entry = {"device": device_name, "machine": info.describe() if accelerator == "cpu" else device_name,
                 "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
                 "batch": args.batch_size, "steps": args.steps, "rounds": args.rounds, "rows": rows}
        old = json.loads(args.json.read_text())["machines"] if args.json.is_file() else []
        machines = [m for m in old if m["machine"] != entry["machine"]] + [entry]
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machines": machines}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
