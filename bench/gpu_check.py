"""The one prepared check for a CUDA machine: what only a GPU shows, in at most about 8 minutes on one GPU.

    make gpu-check                       # = python bench/gpu_check.py --data .data/cifar10 --json build/gpu-check.json
    python bench/gpu_check.py --data /root/data/cifar10 --json $OUT/gpu-check.json

Checks, each recorded in the JSON file (the command exits 1 if any fails). `--script-check` runs every check on tiny
data on the CPU, so the script itself is tested without a GPU (tests/test_devices.py, in `make test`); there the
CUDA-only checks (item 3, and 16-mixed, which a CPU runs as bf16-mixed) are reported as such and do not fail the
run, item 1 in the compile item's precision is item 2's run, and on a GPU anything not ok fails it.
1. A 2-epoch run end to end under bf16-mixed, 16-mixed and 32-true (`fabric_train.py --accelerator cuda`, through
   tests/probe_train.py, which records the dtype of a convolution's output inside the steps): results.json and
   model/ written, the dtype the precision promises, and the published accuracy equal to `python -m s10.evaluate` of
   the same weights on the CPU, on the same test images (`--images-of`; exact float32 on both; at most one image
   may differ).
2. `--compile` (bf16-mixed, 1 epoch) end to end, its published weights under the network's own names.
3. `torch.cuda.set_sync_debug_mode("error")` around training steps (augmentation, step, progress bar) and the
   per-epoch test pass, after a warm-up epoch: any host synchronisation raises. CUDA only: the self-test reports it
   "cuda only", not ok.
4. Training images/s and the fraction of the GPU's peak beside a raw PyTorch loop of the same net, in the same run
   (bench/train_throughput.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DTYPES = {"bf16-mixed": "bfloat16", "16-mixed": "float16", "32-true": "float32"}
ACCELERATOR = "cuda"


def run(cmd: list[str], env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    t0 = time.time()
    proc = subprocess.run([str(c) for c in cmd], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})})
    print(f"  {' '.join(map(str, cmd[1:4]))} ... exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
    if proc.returncode:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


SCRIPT_CHECK = []  # --script-check: extra flags that make every run tiny, on the CPU (checks this script only)


def evaluate_on_cpu(model: Path, data: str, run_folder: Path) -> dict:
    """`python -m s10.evaluate MODEL DATA --images-of RUN`'s figures, in this process (no second start-up of torch):
    the weights and the images on the CPU, exact float32."""
    from s10 import evaluate
    from s10.data import load_dataset

    images = load_dataset(data)
    evaluate.same_images(images, run_folder)
    return evaluate.measure(model, images)


def plain_weight_names(path: Path) -> bool:
    """The published weights carry the network's own names (a compiled run's `_orig_mod.` prefixes stripped)."""
    from safetensors.torch import load_file

    from s10.model import S10Net

    return path.is_file() and set(load_file(path)) == set(S10Net().state_dict())


def end_to_end(data: str, out: Path, precision: str, epochs: int, compile: bool = False) -> dict:
    folder = out / (precision + ("-compile" if compile else ""))
    run([sys.executable, ROOT / "tests" / "probe_train.py", "--accelerator", ACCELERATOR, "--devices", "1",
         "--data", data, "--out", folder, "--epochs", epochs, "--precision", precision, "--no-progress-bar",
         *(["--compile"] if compile else []), *SCRIPT_CHECK], timeout=300)
    results = json.loads((folder / "results.json").read_text())
    probe = json.loads((folder / "probe-rank0.json").read_text())
    cpu = evaluate_on_cpu(folder / "model", data, folder)
    metrics = (folder / "metrics.csv").read_text().splitlines()
    row = dict(zip(metrics[0].split(","), metrics[-1].split(",")))
    out_row = {"precision": precision, "compile": compile, "epochs": epochs, "dtypes": probe["dtypes"],
               "test_images": results["test_images"], "test_images_evaluated": cpu["test_images"],
               "test_acc_published": results["test_acc"], "test_acc_evaluate_cpu": cpu["test_acc"],
               "model_files": sorted(p.name for p in (folder / "model").iterdir()),
               "weight_names_plain": plain_weight_names(folder / "model" / "model.safetensors"),
               "images_per_s_last_epoch": float(row["images_per_s"])}
    expected = DTYPES[precision]
    out_row["ok"] = bool(probe["dtypes"].get("training_step") == [expected]
                         and probe["dtypes"].get("validation_step") == [expected]
                         and results["test_images"] == cpu["test_images"]
                         and abs(results["test_acc"] - cpu["test_acc"]) <= 1 / results["test_images"] + 1e-9
                         and out_row["weight_names_plain"])
    return out_row


def sync_free_steps(data: str, out: Path) -> dict:
    """In process: a warm-up epoch, then one epoch and the test pass under sync debug mode "error"."""
    import torch

    import fabric_train

    args = fabric_train.parse_args(["--data", data, "--out", str(out / "sync"), "--accelerator", ACCELERATOR,
                                    "--devices", "1", "--train-limit", "10240", "--test-limit", "2048",
                                    "--precision", "bf16-mixed", "--no-checkpoint", "--epochs", "3", *SCRIPT_CHECK])
    fabric = fabric_train.build_fabric(args)
    (out / "sync").mkdir(parents=True, exist_ok=True)
    run_state = fabric_train.Run(fabric, args, fabric_train.new_recipe(args), code={})
    fabric_train.load_data(run_state)
    fabric_train.setup_model(run_state)
    fabric_train.setup_optimizer(run_state)
    fabric_train.train_epoch(run_state, 1)
    from s10.data import augmented_batches

    batches = augmented_batches(run_state.train, run_state.recipe.batch_size, 0, 1, 0, 2, run_state.mean,
                                run_state.std)
    cuda = fabric.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    steps = 0
    try:
        bar = next((c for c in fabric._callbacks if type(c).__name__ == "ProgressBar"), None)
        if bar is not None:
            bar.on_train_epoch_start(fabric, 2, 3, 20)
        for i, batch in enumerate(batches):
            step, lr = fabric_train.train_step(run_state, batch, i)
            fabric.call("on_train_batch_end", fabric=fabric, outputs=step, batch=batch, batch_idx=i, lr=lr)
            steps += 1
        fabric_train.validate(run_state)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize()
    if not cuda:  # the self-test: the steps ran, but only CUDA can say whether they wait for the device
        return {"steps_checked": steps, "progress_bar": bar is not None, "ok": None, "cuda_only": True}
    return {"steps_checked": steps, "progress_bar": bar is not None, "ok": steps > 0}


def verdict(check: dict) -> str:
    if check.get("cuda_only"):
        return "cuda only (not checked on the CPU)"
    if check.get("in") == "compile":
        return "checked by the compile item (the same run with --compile)"
    return "ok" if check["ok"] else "FAILED"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT / ".data" / "cifar10"))
    p.add_argument("--json", type=Path, default=ROOT / "build" / "gpu-check.json")
    p.add_argument("--script-check", action="store_true", help="tiny runs on the CPU: checks this script, not a GPU")
    args = p.parse_args()
    import torch

    from s10 import hardware

    global ACCELERATOR
    if args.script_check:
        ACCELERATOR = "cpu"
        SCRIPT_CHECK.extend(["--smoke", "--batch-size", "16"])

    report = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
              "torch": torch.__version__, "cuda": torch.version.cuda, "checks": {}}
    if not torch.cuda.is_available() and not args.script_check:
        print("gpu-check: no CUDA device", file=sys.stderr)
        return 1
    checks = report["checks"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        # The self-test checks the script, not the CPU: one epoch each, and compile in the CPU's own precision
        # (bf16 is emulated, slowly, on a CPU without it).
        epochs, compiled = (1, hardware.default_precision("cpu")) if args.script_check else (2, "bf16-mixed")
        cuda_only = {"16-mixed"} if args.script_check else set()  # a CPU runs 16-mixed as bf16-mixed: the same run
        # In the self-test the compile item is also the eager item of its precision: the same end_to_end() (same
        # script, same checks) with --compile added; a second, eager run would check no line of this script more.
        in_compile = {compiled} if args.script_check else set()
        skipped = {p: {"ok": None, "cuda_only": True} if p in cuda_only else {"ok": None, "in": "compile"}
                   for p in cuda_only | in_compile}
        jobs = [(f"end_to_end_{p}", (lambda p=p: skipped[p]) if p in skipped else
                 (lambda p=p: end_to_end(args.data, out, p, epochs))) for p in DTYPES]
        jobs += [("compile", lambda: end_to_end(args.data, out, compiled, 1, compile=True)),
                 ("sync_free_steps", lambda: sync_free_steps(args.data, out))]
        for name, job in jobs:
            print(f"{name}:", flush=True)
            try:
                checks[name] = job()
            except Exception as err:  # noqa: BLE001 - every failure is recorded and fails the check
                checks[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                                "traceback": traceback.format_exc()[-3000:]}
            print(f"  {verdict(checks[name])}", flush=True)
        throughput = out / "throughput.json"
        try:
            import train_throughput  # bench/, beside this file: in this process (no second start-up of torch)

            steps = ["--steps", "1", "--rounds", "1", "--batch-size", "16"] if args.script_check else \
                ["--steps", "20", "--rounds", "3"]
            print("throughput:", flush=True)
            train_throughput.main(["--data", args.data, "--accelerator", ACCELERATOR, "--precision", "32-true",
                                   "bf16-mixed", *steps, "--json", str(throughput)])
            checks["throughput"] = {"ok": True, **json.loads(throughput.read_text())}
        except Exception as err:  # noqa: BLE001
            checks["throughput"] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    # On a GPU every check must be ok; in the self-test an item not run on the CPU (ok None, verdict() says why: CUDA
    # only, or the compile item's run) is not a failure.
    report["ok"] = all(c["ok"] or (args.script_check and c["ok"] is None) for c in checks.values())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu-check: {'passed' if report['ok'] else 'FAILED'}; {args.json}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
