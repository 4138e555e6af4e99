"""The real entry point, fabric_train.py, run as a user would: smoke runs on a tiny tree, 1 and 2 processes."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from s10.data import load_dataset
from s10.evaluate import predict_logits
from s10.model import S10Net
from tests.conftest import CIFAR, ROOT, free_port, ok, run_train, train_here

PROBE = ROOT / "tests" / "probe_train.py"

RUN_FILES = ["config.json", "metrics.csv", "train.log", "checkpoints/last.ckpt", "model/model.safetensors",
             "model/config.json"]
# The network's own weights are published (--ema-decay 0): a smoke run's few steps would leave the default recipe's
# moving average at the initial weights, and two runs' initial weights are equal whatever the runs did in between.
# The moving average's own resume and publishing are tested in tests/test_recipe.py.
SMOKE = ["--smoke", "--batch-size", 16, "--epochs", 2, "--no-progress-bar", "--ema-decay", 0]


def metrics(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def recount(run, data_root) -> float:
    """Test accuracy by an independent forward pass over the whole test set, from the saved model/ folder."""
    model = S10Net.from_pretrained(run / "model")
    test = load_dataset(str(data_root)).test
    logits = predict_logits(model, test.images, model.config.mean, model.config.std)
    return (logits.argmax(-1) == test.labels).float().mean().item()


def test_smoke_run_writes_the_run_folder(tiny_data, tmp_path, capfd):
    """The command as a user types it, no --precision: the run folder, its figures recounted, and the precision this
    CPU gets (`Cpu.fast_bf16`: bf16-mixed with AMX, or AVX512-BF16 on AMD; else 32-true) recorded and computed in
    (through tests/probe_train.py, which records the dtype inside the steps)."""
    import fabric_train

    run = tmp_path / "run"
    proc = ok(run_train("--data", tiny_data, "--out", run, "--smoke", "--batch-size", 16, "--max-lr", 0.4 * 16 / 512,
                        "--epochs", 2, "--ema-decay", 0, script=PROBE))  # the default's peak LR, scaled to the batch;
    # the last epoch's network is what is published (see SMOKE)
    fast = fabric_train.hardware.cpu().fast_bf16
    assert json.loads((run / "config.json").read_text())["args"]["precision"] == ("bf16-mixed" if fast else "32-true")
    assert probe(run)["dtypes"]["training_step"] == ["bfloat16" if fast else "float32"]
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    last = {k: float(v) for k, v in rows[-1].items()}
    # The LR of the run's last step, by hand: 2 epochs of 48 // 16 = 3 steps; linear from 0 up to the peak at step
    # 6 x 5/24 = 1.25, down to 0 at step 6, so step 5 is at 1 / 4.75 of the peak.
    assert last["lr"] == pytest.approx(0.4 * 16 / 512 / 4.75, rel=1e-6)
    assert last["test_acc"] == pytest.approx(recount(run, tiny_data), abs=1e-6)
    assert round(48 * last["train_acc"]) == pytest.approx(48 * last["train_acc"], abs=1e-4)  # whole images
    assert 0 < last["train_loss"] < 5 and 0 < last["test_loss"] < 5  # ln(3) = 1.1 at chance
    assert last["images_per_s"] == pytest.approx(48 / last["epoch_time_s"], rel=0.01)
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["train_images"] == 48 and config["data"]["test_images"] == 21
    assert config["recipe"]["batch_size"] == 16 and config["versions"]["torch"] == torch.__version__
    assert "git_commit" in config
    assert "epoch  2/2" in (run / "train.log").read_text()
    assert "batch/s" in proc.stderr  # the tqdm bar
    # A second run into the same folder is refused (in process: the command's own cli()).
    capfd.readouterr()
    assert fabric_train.cli(["--data", str(tiny_data), "--out", str(run), *map(str, SMOKE)]) == 2
    assert "already holds a run" in capfd.readouterr().err


def test_switched_off_callbacks_are_not_called(tiny_data, tmp_path, capfd):
    run = tmp_path / "run"
    train_here("--data", tiny_data, "--out", run, *SMOKE, "--no-checkpoint")
    assert not (run / "checkpoints").exists()
    assert "batch/s" not in capfd.readouterr().err
    assert (run / "model" / "model.safetensors").is_file()


def probe(run: Path, rank: int = 0) -> dict:
    return json.loads((run / f"probe-rank{rank}.json").read_text())


# Runs that several tests read are session fixtures (never torn down between their readers, wherever the tests run);
# the tests that share one are in one xdist group (`make test` runs workers with --dist loadgroup), so each is made
# once.
@pytest.fixture(scope="session")
def averaged_bf16_run(tiny_data, tmp_path_factory) -> Path:
    """A 1-epoch smoke run on 2 processes in bf16-mixed with a fast moving average of the weights (decay 0.5, every
    step), through tests/probe_train.py (which records the dtypes inside the steps and what each rank evaluates at
    the end)."""
    run = tmp_path_factory.mktemp("averaged-bf16") / "run"
    ok(run_train("--accelerator", "cpu", "--devices", 2, "--data", tiny_data, "--out", run, *SMOKE, "--epochs", 1,
                 "--precision", "bf16-mixed", "--no-checkpoint", "--ema-decay", 0.5, "--ema-every", 1, script=PROBE))
    return run


@pytest.mark.xdist_group("two_processes")
@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", "bfloat16"), ("32-true", "float32")])
def test_the_steps_compute_in_the_precision_asked_for(request, precision, dtype):
    """The dtype of the first convolution's output, recorded inside training_step and validation_step on every
    rank: the arithmetic the flag promises, on two processes. On one process the GPU check's self-test checks the
    same, for each of the three precisions (tests/test_devices.py)."""
    run = request.getfixturevalue("averaged_bf16_run" if precision == "bf16-mixed" else "two_process_run")
    assert json.loads((run / "config.json").read_text())["args"]["precision"] == precision
    for rank in (0, 1):
        assert probe(run, rank)["dtypes"] == {"training_step": [dtype], "validation_step": [dtype]}, rank


@pytest.mark.parametrize("device, cuda_native_bf16, vendor, cpu_flags, expected", [
    ("cuda", True, "", set(), "bf16-mixed"),  # A100, H100, RTX 30xx and newer
    ("cuda", False, "", set(), "16-mixed"),  # T4, V100: bf16 only emulated
    ("cpu", False, "AuthenticAMD", {"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed"),  # Zen 4 and newer
    ("cpu", False, "GenuineIntel", {"avx2", "avx512f", "avx512_bf16"}, "32-true"),  # Cooper Lake, AMX hidden
    ("cpu", False, "GenuineIntel", {"avx2", "avx512_bf16", "amx_bf16", "amx_tile"}, "bf16-mixed"),  # Sapphire R.
    ("cpu", False, "AuthenticAMD", {"avx2", "avx512f"}, "32-true"),  # no bf16: autocast would be many times slower
    ("cpu", False, "", set(), "32-true"),
    ("mps", False, "", set(), "32-true"),
])
def test_default_precision_follows_native_support(monkeypatch, device, cuda_native_bf16, vendor, cpu_flags,
                                                  expected):
    import fabric_train

    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["including_emulation"] = including_emulation
        return cuda_native_bf16 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(fabric_train.hardware, "cpu",
                        lambda: fabric_train.hardware.Cpu(vendor=vendor, flags=frozenset(cpu_flags)))
    assert fabric_train.hardware.default_precision(device) == expected
    if device == "cuda":
        assert asked == {"including_emulation": False}


def test_cpu_default_precision_is_the_faster_on_every_cpu_measured():
    """The rule behind the CPU default, against the benchmark's table of measured CPUs (docs/speed.md): on each, it
    picks bf16-mixed exactly where bf16-mixed trained faster than float32."""
    from s10.hardware import Cpu

    cpus = json.loads((ROOT / "bench" / "results" / "train_precision_by_cpu.json").read_text())["cpus"]
    faster = [c["images_per_s"]["bf16-mixed"] > c["images_per_s"]["32-true"] for c in cpus]
    assert set(faster) == {True, False}  # the table holds both outcomes
    for c, bf16_faster in zip(cpus, faster):
        assert Cpu.from_row(c).fast_bf16 == bf16_faster, c


@pytest.mark.parametrize("vendor, family, cpu_flags, precision, flops_per_cycle", [
    ("GenuineIntel", 6, {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "bf16-mixed", 1024),  # oneDNN runs AMX
    ("GenuineIntel", 6, {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, "32-true", 64),  # AMX has no float32
    ("GenuineIntel", 6, {"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed", 128),  # AVX512-BF16 pairs
    ("AuthenticAMD", 25, {"avx2", "avx512f", "avx512_bf16"}, "bf16-mixed", 64),  # Zen 4: 256-bit units
    ("AuthenticAMD", 23, {"avx2"}, "32-true", 32),
])
def test_cpu_peak_counts_the_unit_that_does_the_arithmetic(vendor, family, cpu_flags, precision, flops_per_cycle):
    """The benchmark's fraction of peak: with AMX, bf16 convolutions run on the tile unit (1024 FLOPs a cycle and
    core), so an AVX-512 peak would let an AMX machine's bf16 run read as near its peak while it uses a tenth."""
    import importlib.util

    from s10.hardware import Cpu

    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    peak, rule = bench.cpu_peak_tflops(precision, Cpu(vendor=vendor, family=family, flags=frozenset(cpu_flags)), 2,
                                       1.0)
    assert peak == pytest.approx(2 * flops_per_cycle / 1e3) and f"x {flops_per_cycle} FLOPs/cycle" in rule


# The --compile smoke run (plain weight names, the published accuracy recounted): the GPU check's self-test,
# tests/test_devices.py, runs it.

NODE_FLAGS = ("--find-lr", "--lr-find-steps", 12)  # the nodes' float32: `fabric run --precision 32`
TWO = ["--accelerator", "cpu", "--devices", 2, *SMOKE, *NODE_FLAGS, "--precision", "32-true"]
SAME_ARITHMETIC = {"OMP_NUM_THREADS": "1"}  # Fabric gives each process cores / local processes threads otherwise


@pytest.fixture(scope="session")
def two_process_run(tiny_data, tmp_path_factory) -> Path:
    """A finished smoke run on 2 processes, its LR range test included, through tests/probe_train.py (each rank's
    sweep, suggestion and weights recorded): read, never written, by the tests that take it. The 2-node runs are
    compared with it: float32 and one thread per process in both, so the arithmetic is the same."""
    run = tmp_path_factory.mktemp("two-processes") / "run"
    ok(run_train("--data", tiny_data, "--out", run, *TWO, script=PROBE, env=SAME_ARITHMETIC))
    return run


@pytest.mark.xdist_group("two_processes")
def test_lr_range_test_on_two_processes_runs_in_lockstep(two_process_run):
    """The sweep's loss is the mean over the ranks, so both ranks see the same losses (each rank's own batches give
    different ones), suggest the same peak LR, restore the same weights after the sweep, and end the run with
    identical parameters."""
    run = two_process_run
    ranks = [probe(run, 0), probe(run, 1)]
    assert ranks[0]["lr_sweep"] == ranks[1]["lr_sweep"] and len(ranks[0]["lr_sweep"]["losses"]) > 5
    assert ranks[0]["lr_suggestion"] == ranks[1]["lr_suggestion"]
    assert json.loads((run / "config.json").read_text())["recipe"]["max_lr"] == ranks[0]["lr_suggestion"]
    assert ranks[0]["after_lr_find"] == ranks[1]["after_lr_find"]
    a, b = load_file(run / "probe-rank0.safetensors"), load_file(run / "probe-rank1.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "LR range test: " in (run / "train.log").read_text()




@pytest.mark.xdist_group("two_processes")
def test_the_weight_average_is_the_same_on_every_rank(averaged_bf16_run):
    """Two processes (DDP, gloo) with a fast average: at the end both ranks evaluate the same averaged network,
    batch-norm statistics included, and it is the one published, so results.json is the published weights' figure."""
    run = averaged_bf16_run
    ranks = [load_file(run / f"probe-rank{r}.safetensors") for r in (0, 1)]
    published = load_file(run / "model" / "model.safetensors")
    assert any("running_mean" in k for k in published)
    for k, v in published.items():
        assert torch.equal(ranks[0][k].contiguous(), ranks[1][k].contiguous()), k
        torch.testing.assert_close(ranks[0][k].float(), v.float(), rtol=0, atol=0, msg=k)
    assert json.loads((run / "config.json").read_text())["recipe"]["ema_decay"] == 0.5


@pytest.mark.xdist_group("two_processes")
@pytest.mark.parametrize("launcher", ["python", "fabric run"])
def test_two_processes_count_every_test_image_once(tiny_data, launcher, request):
    """Each rank evaluates its share of an odd test set; the epoch's figure and the published one are the recount of
    the published weights. Launched by Fabric from `python fabric_train.py --devices 2`, and by `fabric run` (the
    2-node run, 1 process each): its `--precision 32` is an alias `fabric run` accepts and hands over in LT_PRECISION,
    recorded by its name (Fabric, which compares the two, sees no conflict); that the run computed in float32 is
    said by its weights, equal to the 2-process float32 run's (test_two_nodes_on_loopback_...)."""
    if launcher == "python":
        run = request.getfixturevalue("two_process_run")
    else:
        run, _ = request.getfixturevalue("two_nodes_run")
        assert json.loads((run / "config.json").read_text())["args"]["precision"] == "32-true"
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2 and config["data"]["test_images"] == 21  # odd: 10 + 11 per rank
    exact = recount(run, tiny_data)
    assert float(metrics(run)[-1]["test_acc"]) == pytest.approx(exact, abs=1e-6)
    assert json.loads((run / "results.json").read_text())["test_acc"] == pytest.approx(exact, abs=1e-6)


@pytest.fixture(scope="session")
def stopped_run(tiny_data, tmp_path_factory) -> Path:
    """A smoke run in this machine's default precision, stopped after epoch 1 (its checkpoint written): each test
    resumes its own copy (`copy_of`)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train_here("--data", tiny_data, "--out", run, *SMOKE, "--stop-after-epoch", 1)
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.xdist_group("stopped")
def test_resume_drops_metrics_rows_past_the_checkpoint(tiny_data, tmp_path, stopped_run):
    run = copy_of(stopped_run, tmp_path)
    # A run killed after logging epoch 2 but before its checkpoint was renamed into place.
    with open(run / "metrics.csv", "a") as f:
        f.write(f"2,{','.join(['0.5'] * 8)}\n")
    train_here("--data", tiny_data, "--out", run, *SMOKE, "--resume")
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2] and float(rows[1]["test_loss"]) != 0.5


@pytest.mark.xdist_group("stopped")
def test_resume_restores_the_metrics_from_the_checkpoint(tiny_data, tmp_path, stopped_run):
    """The history lives in the checkpoint: a run whose metrics.csv was lost resumes with all of it."""
    run = copy_of(stopped_run, tmp_path)
    first = metrics(run)
    (run / "metrics.csv").unlink()
    train_here("--data", tiny_data, "--out", run, *SMOKE, "--resume")
    rows = metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0] == first[0]


@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing"], "not a directory"),
    (["--data", "{tmp}"], "missing"),
    (["--data", "{differ}"], "class folders differ"),
    (["--data", "{tiny}", "--bogus"], "unrecognized arguments"),
    (["--data", "{tiny}", "--precision", "fp8"], "--precision fp8 is not supported"),
    (["--data", "{tiny}", "--precision", "bf16-true"], "--precision bf16-true is not supported"),
    (["--data", "{tiny}", "--precision", "64"], "--precision 64 is not supported"),
    (["--data", "{tiny}", "--strategy", "fsdp"], "invalid choice"),
    (["--data", "{tiny}", "--devices", "two"], "--devices"),
    (["--data", "{tiny}", "--batch-size", "0"], "--batch-size"),
    (["--data", "{tiny}", "--batch-size", "x"], "invalid int value"),
    (["--data", "{tiny}", "--accelerator", "cpu", "--devices", "2", "--batch-size", "15"], "not divisible"),
    (["--data", "{tiny}", "--max-lr", "-1"], "--max-lr must be positive"),
    (["--data", "{tiny}", "--max-lr", "0.1", "--find-lr"], "not allowed with argument"),
    (["--data", "{tiny}", "--label-smoothing", "1.5"], "--label-smoothing"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_data, tmp_path, capfd, args, message):
    """In process (the same cli() the script runs), with every byte written to stdout and stderr captured."""
    import fabric_train
    from tests.conftest import make_tree

    differ = make_tree(tmp_path / "differ", n_train=2, n_test=1)
    shutil.move(differ / "test" / "ship", differ / "test" / "boat")
    args = [a.format(tmp=tmp_path, tiny=tiny_data, differ=differ) for a in args]
    code = fabric_train.cli([*args, "--out", str(tmp_path / "run"), "--smoke", "--no-progress-bar"])
    out, err = capfd.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err and not out.strip(), err


def test_cifar10_without_network_or_cache(tmp_path, monkeypatch, capsys):
    import fabric_train
    from torchvision.datasets import CIFAR10

    def no_network(self):
        raise OSError("network unreachable")

    monkeypatch.setattr(CIFAR10, "download", no_network)
    monkeypatch.setenv("S10_DATA", str(tmp_path))
    assert fabric_train.cli(["--data", "cifar10", "--out", str(tmp_path / "run"), "--smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be downloaded" in err[0]


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the offline CIFAR-10 copy: make data")
def test_two_epochs_on_1500_real_images_learn(tmp_path):
    """The network learns from real images (94 steps of 32 images: at least 35 % on 500 test images, chance is
    10 %; the binomial sd of one figure there is about 2 points), and what is published is what it learnt: so few
    updates of the weights' moving average would publish mostly the initial weights (warned), so this run publishes
    the network's."""
    run = tmp_path / "run"
    # `adam` at its usual peak: in so few steps Adam learns more than the default's SGD, so the bound stays clear of
    # the figure's noise on any machine.
    train_here("--data", CIFAR, "--out", run, "--recipe", "adam", "--max-lr", 2.3e-3, "--epochs", 2, "--batch-size",
               32, "--train-limit", 1500, "--test-limit", 500, "--no-progress-bar", "--no-checkpoint", "--ema-decay", 0)
    acc = float(metrics(run)[-1]["test_acc"])
    published = json.loads((run / "results.json").read_text())["test_acc"]
    assert acc >= 0.35 and published >= 0.35, (acc, published)


# -- a run survives any kill ------------------------------------------------------------------------------------------

KILLABLE = ["--data", None, "--smoke", "--batch-size", 16, "--epochs", 3, "--find-lr", "--lr-find-steps", 10,
            "--no-progress-bar", "--ema-decay", 0]  # the network's weights are published: see SMOKE


def killable(tiny_data) -> list:
    return [tiny_data if a is None else a for a in KILLABLE]


@pytest.fixture(scope="session")
def uninterrupted(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    train_here(*killable(tiny_data), "--out", run)
    return run


def kill_when(cmd_args, ready, env) -> None:
    """Start the real entry point, SIGKILL it (no clean-up runs) as soon as `ready()` holds."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen([sys.executable, str(PROBE), *map(str, cmd_args)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before the point it was to be killed at"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.xdist_group("killed")
@pytest.mark.parametrize("point", ["lr range test", "epoch 1", "epoch 2"])
def test_a_run_killed_at_any_point_resumes_to_the_same_end(tiny_data, tmp_path, uninterrupted, point):
    """SIGKILL during the LR range test, during epoch 1 (after the epoch-0 checkpoint) or during epoch 2: the same
    command with --resume finishes the run, with the peak LR the range test found and the weights of a run that was
    never stopped."""
    run = tmp_path / "run"
    log = run / "train.log"
    ckpt = run / "checkpoints" / "last.ckpt"

    def text():
        return log.read_text() if log.is_file() else ""

    ready = {"lr range test": lambda: "LR range test: up to" in text(),
             "epoch 1": lambda: ckpt.is_file() and "epoch  1/" not in text(),
             "epoch 2": lambda: "epoch  1/" in text() and "epoch  2/" not in text()}[point]
    slow = {"PROBE_STEP_SECONDS": "0.3"}  # each training step of the run to kill sleeps: time to land inside an epoch
    kill_when([*killable(tiny_data), "--out", run], ready, slow)
    assert not (run / "results.json").exists()
    train_here(*killable(tiny_data), "--out", run, "--resume")
    assert [int(r["epoch"]) for r in metrics(run)] == [1, 2, 3]
    found = json.loads((uninterrupted / "config.json").read_text())["recipe"]["max_lr"]
    assert json.loads((run / "config.json").read_text())["recipe"]["max_lr"] == found
    a, b = load_file(uninterrupted / "model" / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    diffs = {k: (a[k].float() - b[k].float()).abs().max().item() for k in a}
    rows = [[(r["epoch"], r["train_loss"], r["test_loss"]) for r in metrics(x)] for x in (uninterrupted, run)]
    assert max(diffs.values()) <= 1e-5, (sorted(diffs.items(), key=lambda kv: -kv[1])[:5], rows)  # where, and when


@pytest.mark.xdist_group("stopped")
def test_a_resumed_run_refuses_another_precision(tiny_data, tmp_path, capfd, stopped_run):
    import fabric_train

    run = copy_of(stopped_run, tmp_path)
    recorded = json.loads((run / "config.json").read_text())["args"]["precision"]
    other = "32-true" if recorded == "bf16-mixed" else "bf16-mixed"
    code = fabric_train.cli(["--data", str(tiny_data), "--out", str(run), *map(str, SMOKE), "--resume",
                             "--precision", other])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"has --precision {recorded}, not {other}" in err[0]
    assert [int(r["epoch"]) for r in metrics(run)] == [1]  # nothing trained


def test_lr_range_test_leaves_the_gradient_scaler_as_it_found_it(tiny_data, tmp_path):
    """Under 16-mixed (a GradScaler whose scale grows every step, so the sweep moves it), the LR range test restores
    the scaler with the network and the optimizer: the run's first step sees the scale it would have seen."""
    import fabric_train
    import s10.lr_finder
    from lightning.fabric import Fabric

    from tests.conftest import scaled_plugin

    scaler = torch.amp.GradScaler("cpu", growth_factor=3.0, growth_interval=1)  # x3 or x0.5 each step: it moves
    fabric = Fabric(accelerator="cpu", devices=1, plugins=[scaled_plugin(scaler)])
    args = fabric_train.parse_args(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke",
                                    "--batch-size", "16", "--lr-find-steps", "4"])
    args.out.mkdir()
    run = fabric_train.Run(fabric, args, fabric_train.new_recipe(args), code={})
    fabric_train.load_data(run)
    fabric_train.setup_model(run)
    before = scaler.state_dict()
    during = {}
    sweep = s10.lr_finder.lr_range_test

    def recording(*a, **kw):
        found = sweep(*a, **kw)
        during.update(scaler.state_dict())
        return found

    s10.lr_finder.lr_range_test = recording
    try:
        fabric_train.find_lr(run)
    finally:
        s10.lr_finder.lr_range_test = sweep
    assert during["scale"] != before["scale"]  # the sweep did move it
    assert scaler.state_dict() == before


def test_a_failure_that_is_not_a_flag_keeps_its_traceback(tiny_data, tmp_path, monkeypatch, capfd):
    """A device or NCCL failure inside Fabric is not turned into a one-line usage error."""
    import fabric_train
    import lightning.fabric

    def broken(*args, **kwargs):
        raise RuntimeError("NCCL error: unhandled system error")

    monkeypatch.setattr(lightning.fabric, "Fabric", broken)
    with pytest.raises(RuntimeError, match="NCCL error"):
        fabric_train.cli(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke"])


# -- several nodes, on loopback ---------------------------------------------------------------------------------------


def node_copies(tiny_data, tmp_path) -> list[Path]:
    """Each node's own copy of the data folder, as nodes without a shared file system have (made once per test)."""
    copies = [tmp_path / f"data-node{node}" for node in (0, 1)]
    for data in copies:
        if not data.exists():
            shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(".s10-cache"))
    return copies


def start_nodes(tiny_data, tmp_path, out, devices: int, *flags, own_out=False) -> list:
    """`fabric run --precision 32` on 2 nodes of `devices` CPU processes each, on 127.0.0.1, each node with its own
    data copy and, with `own_out`, its own run folder (`out`/node0, `out`/node1): [(node's data copy, its run folder,
    process)]."""
    import os
    import subprocess

    port, procs = free_port(), []
    for node, data in enumerate(node_copies(tiny_data, tmp_path)):
        node_out = out / f"node{node}" if own_out else out
        cmd = [str(Path(sys.executable).parent / "fabric"), "run", "--accelerator", "cpu", "--devices", str(devices),
               "--num-nodes", "2", "--node-rank", str(node), "--main-address", "127.0.0.1", "--main-port", str(port),
               "--precision", "32", str(ROOT / "fabric_train.py"), "--data", str(data), "--out", str(node_out),
               *map(str, SMOKE), *map(str, flags)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **SAME_ARITHMETIC}
        procs.append((data, node_out, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE, text=True,
                                                       start_new_session=True)))  # its group: killed whole
    return procs


def wait_nodes(procs, timeout: float = 300) -> list:
    """[(returncode, stdout, stderr)] of each node; a node still running after `timeout` (a hang) fails the test."""
    import os
    import signal
    import subprocess
    import time

    deadline, results = time.time() + timeout, []
    try:
        for _, _, proc in procs:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.time()))
            results.append((proc.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for _, _, proc in procs:  # the launcher and the ranks it started; then what each node printed: where it hung
            os.killpg(proc.pid, signal.SIGKILL)
        said = [(node, *proc.communicate()) for node, (_, _, proc) in enumerate(procs)]
        pytest.fail(f"the nodes were still running after {timeout} s (a hang):\n" + "\n".join(
            f"node {node} stdout:\n{out[-2000:]}\nnode {node} stderr:\n{err[-3000:]}" for node, out, err in said))
    finally:
        for _, _, proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return results


def run_nodes(tiny_data, tmp_path, out, devices: int, *flags, own_out=False) -> list:
    """start_nodes, each node expected to succeed: [(node's data copy, its run folder)]."""
    procs = start_nodes(tiny_data, tmp_path, out, devices, *flags, own_out=own_out)
    for (code, stdout, stderr) in wait_nodes(procs):
        assert code == 0, f"exit {code}\n{stdout[-3000:]}\n{stderr[-5000:]}"
    return [(data, node_out) for data, node_out, _ in procs]


@pytest.fixture(scope="session")
def two_nodes_run(tiny_data, tmp_path_factory) -> tuple[Path, dict]:
    """2 nodes x 1 process through `fabric run --num-nodes 2` on 127.0.0.1, each node with its own data copy and its
    own run folder (no shared disk), the LR range test included, stopped after epoch 1 and resumed: node 0's folder,
    and what the two folders held at the stop. The flags of `two_process_run`, which the tests compare it with."""
    root = tmp_path_factory.mktemp("two-nodes")
    parts = root / "parts"
    run_nodes(tiny_data, root, parts, 1, *NODE_FLAGS, "--stop-after-epoch", 1, own_out=True)
    stopped = {"epochs": [int(r["epoch"]) for r in metrics(parts / "node0")],
               "model": (parts / "node0" / "model").exists(),
               "node1": sorted(p.name for p in (parts / "node1").iterdir()) if (parts / "node1").exists() else []}
    run_nodes(tiny_data, root, parts, 1, *NODE_FLAGS, "--resume", own_out=True)
    return parts / "node0", stopped


@pytest.mark.xdist_group("two_processes")
def test_two_nodes_on_loopback_equal_one_node_with_two_processes(two_nodes_run, two_process_run):
    """2 nodes x 1 process, each decoding its own data copy: the run ends with the weights and test accuracy of
    1 node x 2 processes (same seed, same data, the same LR range test). The 2-node run was also stopped and resumed
    (next test): equal weights say that neither the second node nor the resume changed the training."""
    two, _ = two_nodes_run
    for node in (0, 1):
        data = two.parents[1] / f"data-node{node}"
        assert list((data / ".s10-cache").glob("test-*.safetensors")), f"{data} was not prepared on its node"
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["num_nodes"] == 2
    a, b = (load_file(run / "model" / "model.safetensors") for run in (two_process_run, two))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
    results = [json.loads((run / "results.json").read_text()) for run in (two_process_run, two)]
    assert results[0]["test_acc"] == results[1]["test_acc"] and results[1]["test_images"] == 21


def test_two_nodes_of_two_processes_smoke(tiny_data, tmp_path):
    run = tmp_path / "run"
    run_nodes(tiny_data, tmp_path, run, 2)
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 4 and config["num_nodes"] == 2
    assert float(metrics(run)[-1]["test_acc"]) == pytest.approx(recount(run, tiny_data), abs=1e-6)


@pytest.mark.xdist_group("two_processes")
def test_two_nodes_with_disks_of_their_own_resume_to_the_uninterrupted_end(two_nodes_run, two_process_run):
    """2 nodes x 1 process, each node with its own --out and data copy (no shared file system), each rank drawing its
    own augmentation: stopped after epoch 1 (nothing published yet) and resumed, the run ends with the weights of the
    uninterrupted run on 1 node x 2 processes. At the stop node 1 has no config.json and no checkpoint of its own:
    rank 0 reads them and broadcasts them (with --find-lr, a node 1 that started afresh would run the LR range test
    while node 0 resumes)."""
    run, stopped = two_nodes_run
    assert stopped["epochs"] == [1] and not stopped["model"]
    assert "config.json" not in stopped["node1"] and "checkpoints" not in stopped["node1"], stopped["node1"]
    assert [int(r["epoch"]) for r in metrics(run)] == [1, 2]
    assert "resumed" in (run / "train.log").read_text()
    a = load_file(two_process_run / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_a_corrupt_data_copy_on_node_1_stops_every_rank_with_one_line(tiny_data, tmp_path):
    """Node 1's copy has an unreadable image: every rank of both nodes prints the same one-line error naming node 1,
    exits with code 2 (torchrun, under `fabric run`, reports it and exits non-zero itself), and nothing hangs."""
    node_copies(tiny_data, tmp_path)
    broken = sorted((tmp_path / "data-node1" / "train" / "cat").iterdir())[0]
    broken.write_bytes(b"not a PNG")
    results = wait_nodes(start_nodes(tiny_data, tmp_path, tmp_path / "run", 1, own_out=True), timeout=180)
    for node, (code, _, stderr) in enumerate(results):
        lines = [line for line in stderr.splitlines() if line.startswith("fabric_train.py: error:")]
        assert code != 0 and len(lines) == 1, (node, stderr[-3000:])
        assert "node 1, rank 1: " in lines[0] and str(broken.name) in lines[0] and "not a readable image" in lines[0]
        assert "exitcode  : 2" in stderr, stderr[-3000:]


@pytest.mark.xdist_group("two_processes")
@pytest.mark.parametrize("devices", [1, 2])
def test_the_losses_weight_every_image_alike(tiny_data, two_process_run, devices, tmp_path):
    """metrics.csv's test_loss is the mean cross-entropy over the test images (of the logits at the recipe's
    scale, as the training loss reads them), recounted from the saved weights' logits: 21 images in batches of 16 (1
    process), or shards of 10 and 11 in batches of 8 (2 processes), so the last batch is short and a mean of batch
    means would differ."""
    import torch.nn.functional as F

    if devices == 1:
        run = tmp_path / "run"
        train_here("--data", tiny_data, "--out", run, *SMOKE, "--epochs", 1, "--precision", "32-true",
                   "--no-checkpoint")
    else:
        run = two_process_run
    model = S10Net.from_pretrained(run / "model")
    test = load_dataset(str(tiny_data)).test
    logits = predict_logits(model, test.images, model.config.mean, model.config.std)
    scale = json.loads((run / "config.json").read_text())["recipe"]["logit_scale"]
    assert float(metrics(run)[-1]["test_loss"]) == pytest.approx(
        F.cross_entropy(logits * scale, test.labels).item(), abs=1e-5)


def test_a_16_mixed_run_resumes_with_its_gradient_scaler(tiny_data, tmp_path, monkeypatch):
    """Under 16-mixed the gradient scaler's state is in the checkpoint: a run stopped after epoch 1 and resumed ends
    with the scale and the weights of the run that was never stopped. The scaler's scale doubles every step (or
    halves and skips the step on an overflow), so a resume that restarted it would skip other steps. In process, with
    Fabric's 16-mixed plugin and a CPU scaler (tests.conftest.scaled_plugin)."""
    import fabric_train
    import lightning.fabric

    from tests.conftest import scaled_plugin

    real = lightning.fabric.Fabric

    def fabric_with_scaler(*args, precision=None, plugins=(), **kwargs):
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14, growth_factor=2.0, growth_interval=1)
        return real(*args, plugins=[*plugins, scaled_plugin(scaler)], **kwargs)

    monkeypatch.setattr(lightning.fabric, "Fabric", fabric_with_scaler)
    full, parts = tmp_path / "full", tmp_path / "parts"
    common = ["--data", str(tiny_data), *map(str, SMOKE), "--epochs", "3", "--precision", "16-mixed"]
    assert fabric_train.cli([*common, "--out", str(full)]) == 0
    assert fabric_train.cli([*common, "--out", str(parts), "--stop-after-epoch", "1"]) == 0
    assert fabric_train.cli([*common, "--out", str(parts), "--resume"]) == 0
    a, b = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=False) for run in (full, parts))
    assert a["scaler"]["scale"] != 2.0**14 and a["scaler"] == b["scaler"]
    assert json.loads((parts / "config.json").read_text())["args"]["precision"] == "16-mixed"
    wa, wb = load_file(full / "model" / "model.safetensors"), load_file(parts / "model" / "model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=0, msg=k)


@pytest.mark.parametrize("env, message", [
    ({"LT_PRECISION": "bf16-true"}, "--precision bf16-true is not supported"),
    ({"LT_PRECISION": "16-true"}, "--precision 16-true is not supported"),
    ({"LT_PRECISION": "64-true"}, "--precision 64-true is not supported"),
    ({"LT_STRATEGY": "fsdp"}, "strategy 'fsdp' is not supported"),
    ({"LT_STRATEGY": "deepspeed"}, "strategy 'deepspeed' is not supported"),
])
def test_what_fabric_run_hands_over_is_checked(tiny_data, tmp_path, capfd, monkeypatch, env, message):
    """`fabric run --precision X` / `--strategy Y` reach the script as LT_PRECISION / LT_STRATEGY: a precision or a
    strategy the trainer does not support is a one-line usage error before any training."""
    import fabric_train

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code = fabric_train.cli(["--data", str(tiny_data), "--out", str(tmp_path / "run"), "--smoke"])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()
