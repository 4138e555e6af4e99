"""Ghost batch norm's cost: one training step of the S10 net (forward and backward, batch 512, channels-last) with
plain batch norm, with ours (`s10.module.ghost_batch_norm`: the batch regrouped so that one fused batch-norm call
normalises every group), and with the same ghost batch norm written op by op in float32 (var_mean, subtract, scale,
shift: how it is usually written, and how this project first wrote it), in one process, rounds alternating, the
median of each.

    python bench/ghost_batch.py                                  # this device's default precision, groups of 32
    python bench/ghost_batch.py --precision 32-true --steps 4 --rounds 3 --json bench/results/ghost_batch.json

Exactness: the gradients of both ghost versions against the same step in float64 (the median over the parameters of
the norm of the difference over the norm of the float64 gradient). Measured figures and the hardware: docs/speed.md
("Ghost batch norm"), written by bench/render.py from bench/results/ghost_batch.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import unittest.mock
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s10 import hardware, module  # noqa: E402
from s10.model import S10Net  # noqa: E402
from s10.module import ghost_batch_norm  # noqa: E402


def op_by_op(bn, group: int, x: torch.Tensor) -> torch.Tensor:
    """The baseline: each group's statistics and the normalisation as separate float32 ops."""
    b, c = x.shape[:2]
    xg = x.float().unflatten(0, (b // group, group))
    var, mean = torch.var_mean(xg, dim=(1, 3, 4), correction=0, keepdim=True)
    y = (xg - mean) * torch.rsqrt(var + bn.eps) * bn.weight.view(1, 1, c, 1, 1) + bn.bias.view(1, 1, c, 1, 1)
    with torch.no_grad():
        n = xg[0].numel() // c
        bn.running_mean.lerp_(mean.mean(0).flatten().to(bn.running_mean.dtype), bn.momentum)
        bn.running_var.lerp_((var * n / (n - 1)).mean(0).flatten().to(bn.running_var.dtype), bn.momentum)
    return y.flatten(0, 1).to(x.dtype).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def op_by_op_ghost(net, group: int):
    """s10.module.ghost_batch_norm with the baseline's forward in place of ours."""
    with unittest.mock.patch.object(module, "_ghost_forward", op_by_op), ghost_batch_norm(net, group):
        yield


VARIANTS = {"plain": lambda net, group: contextlib.nullcontext(), "ours": ghost_batch_norm, "op by op": op_by_op_ghost}


def step(net, variant: str, group: int, x, y, precision: str, device: str) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    with VARIANTS[variant](net, group):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            logits = net(x)
        F.cross_entropy(logits.float(), y).backward()
    return [p.grad for p in net.parameters()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], help="default: the device's default")
    p.add_argument("--group", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the results here (bench/results/ghost_batch.json)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision or hardware.default_precision(device)
    if precision == "16-mixed" or precision.startswith("bf16-true"):
        precision = "bf16-mixed"
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    start = S10Net().state_dict()

    def fresh(dtype=torch.float32):
        net = S10Net().to(device, dtype).to(memory_format=torch.channels_last).train()
        net.load_state_dict(start)
        return net

    reference = step(fresh(torch.float64), "ours", args.group, x.double(), y, "32-true", device)
    errors = {}
    for variant in ("ours", "op by op"):
        grads = step(fresh(), variant, args.group, x, y, precision, device)
        errors[variant] = statistics.median(float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, reference))
    nets = {v: fresh() for v in VARIANTS}
    times = {v: [] for v in VARIANTS}
    for v, net in nets.items():  # warm-up
        step(net, v, args.group, x, y, precision, device)
    for _ in range(args.rounds):
        for v, net in nets.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                step(net, v, args.group, x, y, precision, device)
            if device == "cuda":
                torch.cuda.synchronize()
            times[v].append((time.perf_counter() - t) / args.steps)
    median = {v: statistics.median(t) for v, t in times.items()}
    info = hardware.cpu()
    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": torch.cuda.get_device_name(0) if device == "cuda" else info.describe(),
              "precision": precision, "group": args.group, "batch": args.batch_size, "steps": args.steps,
              "rounds": args.rounds, "step_s": median, "grad_error_vs_float64": errors}
    for v in VARIANTS:
        print(f"{v:>9}: {median[v]:.3f} s a step ({median[v] / median['plain']:.2f}x plain batch norm)"
              + (f", median gradient error {errors[v]:.0e}" if v in errors else ""))
    ours, baseline = (median[v] - median["plain"] for v in ("ours", "op by op"))
    print(f"ghost batch norm's own cost: ours {ours:.3f} s a step, op by op {baseline:.3f} s "
          f"({baseline / max(ours, 1e-9):.1f}x ours)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
