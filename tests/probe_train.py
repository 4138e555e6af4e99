"""fabric_train.py with probes, for tests: `python tests/probe_train.py FLAGS...` runs the real entry point (every
rank runs this file, since Fabric's launcher starts the other ranks with the same command line) and each rank writes
`<out>/probe-rank<R>.json`:

- `dtypes`: the dtype of the first convolution's output inside each LightningModule step that ran
  (`training_step`, `validation_step`), as a set per step;
- `lr_suggestion`, `lr_sweep`: what this rank's LR range test suggested, and the (smoothed) losses that drove it;
- `scaler`: under 16-mixed, the gradient scaler's state before and after the LR range test;
- `after_lr_find` and `final`: a checksum of every parameter and buffer of this rank's network, after the LR range
  test restored it and at the end of the run; `probe-rank<R>.safetensors` holds the full tensors of the network this
  rank evaluates at the end (the weight average with --ema-decay).
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fabric_train  # noqa: E402
import s10.lr_finder  # noqa: E402
from s10.module import S10Module  # noqa: E402

probe = {"dtypes": {}, "lr_suggestion": None, "lr_sweep": None, "after_lr_find": None, "final": None, "scaler": None}
out_dir = Path(sys.argv[sys.argv.index("--out") + 1])


def rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def checksums(net: torch.nn.Module) -> dict[str, float]:
    return {k: float(v.double().sum()) for k, v in net.state_dict().items()}


STEP_SECONDS = float(os.environ.get("PROBE_STEP_SECONDS", 0))  # a slow training step: time to kill a run mid-epoch


def recording(step_name: str):
    original = getattr(S10Module, step_name)

    def step(self, batch, batch_idx):
        if step_name == "training_step" and STEP_SECONDS and self.training:
            time.sleep(STEP_SECONDS)
        def hook(module, inputs, output):
            probe["dtypes"].setdefault(step_name, set()).add(str(output.dtype).removeprefix("torch."))

        handle = self.net.prep[0].register_forward_hook(hook)
        try:
            return original(self, batch, batch_idx)
        finally:
            handle.remove()

    setattr(S10Module, step_name, step)


for name in ("training_step", "validation_step"):
    recording(name)

original_find_lr, original_finish = fabric_train.find_lr, fabric_train.finish
original_sweep = s10.lr_finder.lr_range_test


def lr_range_test(*args, **kwargs):
    found = original_sweep(*args, **kwargs)
    probe["lr_sweep"] = {"lrs": found.lrs, "losses": found.losses, "smoothed": found.smoothed}
    return found


def find_lr(run):
    scaler = getattr(run.fabric.strategy.precision, "scaler", None)
    before = scaler.state_dict() if scaler is not None else None
    probe["lr_suggestion"] = original_find_lr(run)
    probe["after_lr_find"] = checksums(run.net)
    if scaler is not None:
        probe["scaler"] = {"before": before, "after": scaler.state_dict()}
    return probe["lr_suggestion"]


def finish(run):
    from safetensors.torch import save_file

    probe["final"] = checksums(run.net)
    save_file({k: v.detach().cpu().contiguous() for k, v in run.published.state_dict().items()},
              str(out_dir / f"probe-rank{rank()}.safetensors"))
    return original_finish(run)


original_leave = fabric_train.leave
this_rank = 0


def leave():
    global this_rank
    this_rank = rank()  # while the process group is still there: cli() leaves it before it returns
    original_leave()


fabric_train.find_lr, fabric_train.finish, fabric_train.leave = find_lr, finish, leave
s10.lr_finder.lr_range_test = lr_range_test

if __name__ == "__main__":
    code = fabric_train.cli(sys.argv[1:])
    probe["dtypes"] = {k: sorted(v) for k, v in probe["dtypes"].items()}
    (out_dir / f"probe-rank{this_rank}.json").write_text(json.dumps(probe))
    sys.exit(code)
