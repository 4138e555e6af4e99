import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Every test is about the CPU (its default precision, its processes, gloo): on a machine with GPUs, they stay out of
# sight, in this process and in every process a test starts. `make gpu-check` is the check for a GPU.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

# `make test` runs its tests in several pytest-xdist workers at once: each worker, and every process a test starts,
# gets its share of the cores for its OpenMP threads. More threads than cores spin against each other and slow every
# run down (bench/parallel_runs.py measures it). A value already set is kept.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // WORKERS)))
# The same share for torch.compile's pool of compile workers (inductor's default: one per core), which would take the
# other workers' cores while a compiled test compiles.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", os.environ["OMP_NUM_THREADS"])
if "torch" in sys.modules:  # a plugin imported it before this file: set the running process's own pool too
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / ".data" / "cifar10"  # `make data` unpacks the offline copy here
RELEASED = ROOT / "release" / "model"


def make_tree(root: Path, classes=("cat", "dog", "ship"), n_train=24, n_test=7, seed=0, learnable=True) -> Path:
    """A tiny class-folder tree. Learnable: each class has its own mean colour plus noise; else pure noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.zeros((32, 32, 3)) + (60 + 70 * k if learnable else rng.integers(40, 200))
                img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    # 3 classes x 7 = 21 test images: odd, so an uneven split across 2 ranks shows.
    return make_tree(tmp_path_factory.mktemp("tiny"))


def train_here(*args) -> None:
    """The entry point's own cli() in this process, with no second start-up of torch and Lightning: for a
    single-process run whose stdout no test reads (its log is in train.log; pytest shows what it printed if it
    fails)."""
    import fabric_train

    code = fabric_train.cli([str(a) for a in args])
    assert code == 0, f"fabric_train.py exited {code}: see the captured output"


def run_train(*args, timeout=300, launcher=None, env=None, script=None) -> subprocess.CompletedProcess:
    """Run the real entry point, as a user would (or `script`, e.g. tests/probe_train.py, which wraps it)."""
    cmd = (launcher or [sys.executable]) + [str(script or ROOT / "fabric_train.py"), *map(str, args)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=full_env)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """A finished smoke run with CIFAR-10's class names (untrained: its predictions mean nothing, its files are
    real): what publishing and the app are tested with."""
    root = tmp_path_factory.mktemp("smoke")
    data = make_tree(root / "data", classes=CIFAR_NAMES, n_train=4, n_test=3, learnable=False)
    run = root / "run"
    train_here("--data", data, "--out", run, "--smoke", "--batch-size", 16, "--epochs", 1, "--no-progress-bar",
               "--no-checkpoint")
    return run


def scaled_plugin(scaler=None):
    """Fabric's 16-mixed precision plugin with a CPU gradient scaler, as on a GPU without native bf16, but computing
    in bf16: its fp16 convolutions take about half a minute a step on this CPU. The scaler's path (scale, unscale,
    skip, update, state) is what runs as on a GPU."""
    import torch
    from lightning.fabric.plugins import MixedPrecision

    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler or torch.amp.GradScaler("cpu"))
    plugin._desired_input_dtype = torch.bfloat16
    return plugin


def system_chromium() -> str | None:
    """The system's Chromium (Debian's package, `make browser` as root), or None: Playwright's own download
    (`make browser` without root; `python -m playwright install chromium`)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """A real app server in a subprocess, its output collected."""

    def __init__(self, script: Path, env: dict, cwd: Path, pythonpath: str | None = None, timeout: float = 120,
                 python: str = sys.executable):
        import threading
        import time

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(self.port),
                    "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", **env}
        if pythonpath is not None:
            full_env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen([str(python), str(script)], cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        ready = threading.Event()

        def read():
            for line in self.proc.stdout:
                self.lines.append(line)
                if "Running on local URL" in line:
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + timeout
        while not ready.is_set() and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if not ready.is_set():
            self.stop()
            raise AssertionError("app did not start:\n" + "".join(self.lines)[-4000:])

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def client(self):
        from gradio_client import Client

        # Into this session's temporary folder (contained_temp_files), not the shared /tmp/gradio.
        return Client(self.url, verbose=False, download_files=os.path.join(tempfile.gettempdir(), "gradio-client"))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session", autouse=True)
def contained_temp_files(tmp_path_factory):
    """gradio_client stages every file it downloads in a fresh folder of the system's temporary directory and leaves
    that folder behind, empty (gradio_client 2.x, `_download_file`): thousands of them a run. This process's
    temporary directory is this session's pytest folder while the tests run (pytest keeps the last three)."""
    folder = tmp_path_factory.mktemp("tmp")  # the base folder is fixed by now, under the real temporary directory
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    yield folder
    tempfile.tempdir = saved


@pytest.fixture(scope="session")
def released_app(tmp_path_factory):
    """space/app.py imported in this process with the released model (import builds the page, starts no server);
    the pictures it returns go to a temporary gradio cache."""
    import importlib.util

    saved = {k: os.environ.get(k) for k in ("S10_MODEL", "GRADIO_TEMP_DIR")}
    os.environ.update(S10_MODEL=str(RELEASED), GRADIO_TEMP_DIR=str(tmp_path_factory.mktemp("gradio-cache")))
    try:
        spec = importlib.util.spec_from_file_location("app_released", ROOT / "space" / "app.py")
        app = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(app)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return app


@pytest.fixture(scope="session")
def server(smoke_run, tmp_path_factory):
    """The real app serving the smoke run's (untrained) model."""
    app = App(ROOT / "space" / "app.py", env={"S10_MODEL": str(smoke_run / "model"),
                                              "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio-cache")),
                                              "HF_HOME": str(tmp_path_factory.mktemp("hf"))}, cwd=ROOT)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def released_server(tmp_path_factory):
    """The real app serving the released model, with a gradio cache of its own."""
    cache = tmp_path_factory.mktemp("served-cache")
    app = App(ROOT / "space" / "app.py", env={"S10_MODEL": str(RELEASED), "GRADIO_TEMP_DIR": str(cache),
                                              "HF_HOME": str(tmp_path_factory.mktemp("hf"))}, cwd=ROOT)
    app.cache = cache
    yield app
    app.stop()


# The modules with the longest tests first (the release recount, the GPU check's self-test, the trainer's runs), each
# module kept whole (its module fixtures made once): the workers of `make test` then end together, not with one
# worker finishing a long test alone.
FIRST = ("test_release.py", "test_devices.py", "test_train.py", "test_hub.py", "test_recipe.py")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: FIRST.index(item.path.name) if item.path.name in FIRST else len(FIRST))
    result = yield
    # xdist's loadgroup marks a grouped test by a suffix of its node id; with pytest 9.2 that suffix is silently lost
    # and the groups' shared runs are made once per worker (pytest-xdist issue 1386): say so instead.
    if getattr(config, "workerinput", None) is not None and config.getvalue("dist") == "loadgroup":
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"pytest-xdist does not group {lost[0]} (and {len(lost) - 1} more): a pytest that "
                                    "breaks --dist loadgroup (pytest-xdist issue 1386); use the pinned one")
    return result
