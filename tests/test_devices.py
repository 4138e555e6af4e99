"""Where the trainer's tensors live, and whether a training step waits for the device: checked on a CPU-only machine.

Placement: fake CUDA tensors (torch's FakeTensorMode: shapes, dtypes and devices, no data, no GPU) go through every
function that receives the trainer's tensors. A CPU operand meeting a CUDA one raises the device-mismatch error a GPU
raises. A function that needs values stops where it reads one (DataDependentOutputException); on a GPU that read
gives a value, so there only a device error counts as a failure.

Host syncs: real training epochs on the CPU under a TorchFunctionMode that fails on every call that makes the host
wait for a GPU's queue: reading a value back, copying to the host, building a tensor from Python values (a
host-to-device copy), and ops whose output size depends on the values.
"""

import json
import os
import subprocess
import sys
import traceback
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.overrides import TorchFunctionMode

import fabric_train
import s10.data
from s10 import calibration, evaluate
from s10.data import Split, augmented_batches, normalize
from s10.distributed import gather_uneven
from s10.model import CIFAR10_MEAN, CIFAR10_STD, S10Config, S10Net
from s10.module import Recipe, S10Module
from tests.conftest import ROOT, scaled_plugin

CUDA = torch.device("cuda", 0)


pytestmark = pytest.mark.filterwarnings("error:Accessing the data pointer of FakeTensor")  # undefined behaviour


@pytest.fixture
def fake_cuda(monkeypatch):
    """A fake CUDA device. CUDA generators need a driver, so the data path draws from the default generator here
    (its placement, not its randomness, is under test)."""
    monkeypatch.setattr(s10.data, "epoch_generators", lambda seed, epoch, rank, device: (None, None))
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device(CUDA):
        yield


def needs_values_only(fn, *args, **kwargs):
    """Run fn; a value read is where data-less tensors end (a GPU would go on), any other error is a failure."""
    try:
        return fn(*args, **kwargs)
    except DataDependentOutputException:
        return None
    except (RuntimeError, NotImplementedError) as err:
        value_sized = ("aten::bincount", "torch.nonzero()", "aten::unique")  # output sizes that depend on values
        if "meta tensor" in str(err) or any(op in str(err) for op in value_sized):
            return None
        raise


def cuda_split(n: int) -> Split:
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=CUDA),
                 torch.randint(0, 10, (n,), device=CUDA))


def test_the_data_path_stays_on_the_device(fake_cuda):
    mean, std = (torch.tensor(v, device=CUDA) for v in (CIFAR10_MEAN, CIFAR10_STD))
    split = cuda_split(64)
    batches = list(augmented_batches(split, 32, rank=1, world_size=2, seed=0, epoch=1, mean=mean, std=std))
    assert len(batches) == 2
    for x, y in batches:
        assert x.device == CUDA and x.dtype == torch.float32 and x.shape == (16, 3, 32, 32)
        assert x.is_contiguous(memory_format=torch.channels_last) and y.device == CUDA
    assert normalize(split.images, CIFAR10_MEAN, CIFAR10_STD).device == CUDA


def test_the_steps_and_their_metrics_stay_on_the_device():
    """training_step, validation_step and their torchmetrics states on another device than the CPU. On `meta`
    tensors: torchmetrics deep-copies its default states, which fake tensors do not support (undefined behaviour),
    and a CPU tensor meeting a meta one raises the same mismatch as with a CUDA one."""
    with torch.device("meta"):
        module = S10Module(S10Config(), Recipe(), steps_per_epoch=2)
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    step = module.training_step((x, y), 0)
    assert step["loss"].device.type == "meta" and step["acc"].device.type == "meta"
    assert module.validation_step((x, y), 0).device.type == "meta"
    for metric in (module.train_loss, module.train_acc, module.test_loss, module.test_acc):
        assert metric.compute().device.type == "meta"
    assert module.configure_optimizers()["optimizer"].defaults["fused"] is None  # fused: CUDA and CPU only
    with torch.device("cpu"):
        assert S10Module().configure_optimizers()["optimizer"].defaults["fused"]  # the scaler's sync-free path


def test_the_final_evaluation_hands_cpu_float32_to_the_record(fake_cuda, monkeypatch, tmp_path):
    """finish() on a CUDA run: the test logits are gathered on the device, and everything after (calibration,
    results, plots) receives CPU float32 copies. Before the fix, fit_temperature met CUDA logits with a CPU tensor."""
    seen = {}

    def test_results(logits, logits_tta, split, classes):
        seen.update(logits=logits, logits_tta=logits_tta)
        raise StopIteration  # what follows needs values

    monkeypatch.setattr(evaluate, "test_results", test_results)
    net = S10Net()
    fabric = SimpleNamespace(world_size=1, is_global_zero=True, barrier=lambda: None)
    data = SimpleNamespace(test=Split(torch.zeros(21, 3, 32, 32, dtype=torch.uint8, device="cpu"),
                                      torch.zeros(21, dtype=torch.int64, device="cpu")), classes=net.config.class_names)
    run = fabric_train.Run(fabric, SimpleNamespace(out=tmp_path, push_to_hub=None), Recipe(batch_size=16), code={},
                           data=data, test=cuda_split(21), module=SimpleNamespace(net=net),
                           mean=torch.tensor(CIFAR10_MEAN), std=torch.tensor(CIFAR10_STD))
    with pytest.raises(StopIteration):
        fabric_train.finish(run)
    for key in ("logits", "logits_tta"):
        assert seen[key].device == torch.device("cpu") and seen[key].dtype == torch.float32, key
        assert seen[key].shape == (21, 10)


def test_predictions_stay_on_the_device(fake_cuda):
    assert evaluate.predict_logits(S10Net(), cuda_split(7).images, CIFAR10_MEAN, CIFAR10_STD, 4).device == CUDA
    logits = torch.randn(4, 10)
    assert gather_uneven(SimpleNamespace(world_size=1), logits) is logits


def test_what_receives_gathered_logits_works_on_any_device():
    """Calibration (a fit with autograd), results and the misclassified pack, on logits of another device than the
    CPU. Autograd cannot run on fake CUDA tensors, so these run on `meta` tensors (no data either; a CPU tensor
    meeting one raises the same mismatch). Before the fix, fit_temperature's CPU log T met them."""
    logits, labels = torch.randn(40, 10, device="meta"), torch.randint(0, 10, (40,), device="meta")
    cpu_split = Split(torch.zeros(40, 3, 32, 32, dtype=torch.uint8), torch.zeros(40, dtype=torch.int64))
    for fn, args in [(calibration.fit_temperature, (logits, labels)), (calibration.report, (logits, labels)),
                     (evaluate.test_results, (logits, logits, cpu_split, S10Config().class_names)),
                     (evaluate.misclassified, (logits, cpu_split))]:
        try:
            needs_values_only(fn, *args)
        except Exception as err:
            pytest.fail(f"{fn.__module__}.{fn.__name__} on meta logits: {type(err).__name__}: {err}")


# -- no host sync in a training step ---------------------------------------------------------------------------------


class HostSyncs(TorchFunctionMode):
    """Records every call that makes the host wait for a GPU: a value read back (.item(), .tolist(), bool(), int(),
    float(), .numpy()), a copy to the host (.cpu()), a tensor built from Python values (a host-to-device
    copy), and ops whose output size depends on values (nonzero, masked_select, unique, bincount, boolean masks)."""

    READS = {Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.cpu, Tensor.__bool__, Tensor.__int__, Tensor.__float__,
             Tensor.__index__, torch.nonzero, Tensor.nonzero, torch.masked_select, Tensor.masked_select, torch.unique,
             Tensor.unique, torch.bincount, Tensor.bincount, torch.repeat_interleave}
    FROM_PYTHON = {torch.tensor, torch.as_tensor, Tensor.new_tensor}

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__qualname__", str(func))
        if func in self.READS:
            self.record(name)
        elif func in self.FROM_PYTHON:
            data = args[1] if func is Tensor.new_tensor else (args[0] if args else kwargs.get("data"))
            if not isinstance(data, Tensor):
                self.record(f"{name} from Python values")
        elif func is Tensor.__getitem__ and isinstance(args[1], Tensor) and args[1].dtype == torch.bool:
            self.record("boolean mask indexing")
        return func(*args, **kwargs)

    def record(self, what: str):
        where = [f for f in traceback.extract_stack()[:-3] if "/site-packages/" not in f.filename or
                 "/torch/" not in f.filename][-3:]
        self.calls.append(f"{what} at " + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}" for f in where))


def in_process_run(tiny_data, tmp_path, precision: str, plugins=None, flags: tuple = ()):
    """The trainer's phases up to fit, in this process, on one CPU device (no bar, no checkpoint)."""
    from lightning.fabric import Fabric

    args = fabric_train.parse_args(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke",
                                    "--batch-size", "8", "--epochs", "3", "--no-progress-bar", "--no-checkpoint",
                                    *flags])
    fabric = Fabric(accelerator="cpu", devices=1, **({"plugins": plugins} if plugins else {"precision": precision}))
    run = fabric_train.Run(fabric, args, fabric_train.new_recipe(args), code={})
    fabric_train.load_data(run)
    fabric_train.setup_model(run)
    fabric_train.setup_optimizer(run)
    return run


@pytest.mark.parametrize("precision, recipe", [("bf16-mixed", None), ("16-mixed", None), ("bf16-mixed", "course"),
                                              ("16-mixed", "course")])
def test_the_steps_never_wait_for_the_device(tiny_data, tmp_path, precision, recipe):
    """A whole training epoch (augmentation, training_step, backward, optimizer and scheduler steps, the metrics)
    and the per-epoch test pass, after a first epoch has created the optimizer's state: no call that would sync a
    GPU, with the default recipe's SGD and the course's fused Adam, in the two mixed precisions a GPU trains in
    (32-true is the same steps without autocast). 16-mixed: Fabric's plugin with its gradient scaler
    (tests.conftest.scaled_plugin), which hands fused Adam its scale and inf flag."""
    plugins = [scaled_plugin()] if precision == "16-mixed" else None
    run = in_process_run(tiny_data, tmp_path, precision, plugins, ("--recipe", recipe) if recipe else ())
    fabric_train.train_epoch(run, 1)
    with HostSyncs() as syncs:
        fabric_train.train_epoch(run, 2)
        fabric_train.validate(run)
    assert syncs.calls == [], "\n".join(syncs.calls)
    assert type(run.optimizer.optimizer).__name__ == ("Adam" if recipe else "SGD")
    assert run.scheduler.last_epoch == 2 * run.module.steps_per_epoch  # every step of both epochs stepped it


def test_the_sync_check_sees_what_the_old_step_did():
    """The three syncs the step used to have, each caught: the normalisation's constants built from Python values,
    a metric weight given as a Python number, and the gradient scaler's read of found_inf."""
    from torchmetrics import MeanMetric

    with HostSyncs() as syncs:
        normalize(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), CIFAR10_MEAN, CIFAR10_STD)
        MeanMetric().update(torch.ones(()), weight=4)
        torch.ones(()).item()
    assert len(syncs.calls) >= 3, syncs.calls


@pytest.mark.slow
def test_the_prepared_gpu_check_passes_its_own_self_test(tiny_data, tmp_path):
    """`bench/gpu_check.py --script-check`, the GPU check's own run on the CPU on tiny data: every end-to-end item
    compares the published accuracy with `s10.evaluate` on the same test images and passes; the compile and the
    throughput items pass; the checks only CUDA can make (steps without host syncs; 16-mixed, which a CPU runs as
    bf16-mixed, the item before it) are reported as such, not as failures, and the eager item in the compile item's
    precision (the CPU's own) is said to be the compile item's run, so both precisions run. The compiled run is also
    the suite's `--compile` smoke run: its weights keep the network's own names, and the accuracy it publishes is the
    recount of those weights by `s10.evaluate` on the same images."""
    report_path = tmp_path / "gpu-check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--script-check", "--data",
                           str(tiny_data), "--json", str(report_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checks = json.loads(report_path.read_text())["checks"]
    assert checks["sync_free_steps"] == {**checks["sync_free_steps"], "ok": None, "cuda_only": True}
    assert checks["sync_free_steps"]["steps_checked"] > 0
    assert checks["end_to_end_16-mixed"] == {"ok": None, "cuda_only": True}  # on a CPU it is the bf16-mixed run
    compiled = checks["compile"]["precision"]  # the CPU's own; its eager item is the compile item's run
    assert checks[f"end_to_end_{compiled}"] == {"ok": None, "in": "compile"}
    eager = next(p for p in ("32-true", "bf16-mixed") if p != compiled)
    for name, check in checks.items():
        if name not in ("sync_free_steps", "end_to_end_16-mixed", f"end_to_end_{compiled}"):
            assert check["ok"] is True, (name, check)
    for name in (f"end_to_end_{eager}", "compile"):
        assert checks[name]["test_images"] == checks[name]["test_images_evaluated"] == 21, checks[name]
        assert checks[name]["weight_names_plain"] is True, checks[name]  # compiled: no "_orig_mod." prefixes
        assert checks[name]["test_acc_published"] == pytest.approx(checks[name]["test_acc_evaluate_cpu"], abs=1e-6)
    assert checks["compile"]["compile"] is True
    assert "cuda only (not checked on the CPU)" in proc.stdout and "FAILED" not in proc.stdout
