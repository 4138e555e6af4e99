"""The SLURM example for real: docs/slurm/train-cpu.sbatch, submitted with sbatch to a one-host cluster
(tests/slurm/cluster.sh: munge, slurmctld and slurmd on loopback), 1 node x 2 tasks on CPU cores (gloo).

`make slurm-test` installs Debian's slurm-wlm and munge, starts the cluster and runs this file; `make test` leaves it
out (it needs root, two daemons and a few minutes).
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, make_tree

pytestmark = pytest.mark.slurm
SCRIPT = ROOT / "docs" / "slurm" / "train-cpu.sbatch"
FLAGS = ("--train-limit 600 --test-limit 40 --batch-size 16 --epochs 3 --lr-find-steps 5 --precision 32-true "
         "--no-progress-bar")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not os.environ.get("SLURM_CONF"):
        pytest.fail("SLURM_CONF is not set: run `make slurm-test`, which starts the cluster")
    return make_tree(tmp_path_factory.mktemp("slurm-data"), n_train=200, n_test=14)


def submit(data, out) -> str:
    env = {**os.environ, "S10_DATA": str(data), "S10_OUT": str(out), "PYTHON": sys.executable, "S10_FLAGS": FLAGS,
           "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["sbatch", "--parsable", f"--chdir={ROOT}", f"--output={out}.slurm.log", str(SCRIPT)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job(job_id: str) -> dict:
    text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True,
                          timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S+)", text))


def wait_for(job_id: str, out, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job(job_id)
        if info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            log = (out.parent / f"{out.name}.slurm.log").read_text()
            assert info["JobState"] == "COMPLETED", f"job {job_id}: {info.get('JobState')}\n{log[-4000:]}"
            return info
        time.sleep(1)
    subprocess.run(["scancel", job_id], timeout=30)
    pytest.fail(f"job {job_id} did not finish in {timeout} s: {job(job_id).get('JobState')}")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("slurm") / "run"
    wait_for(submit(data, out), out)
    return out


def test_the_sbatch_example_trains_on_two_tasks(uninterrupted):
    config = json.loads((uninterrupted / "config.json").read_text())
    assert config["world_size"] == 2 and config["num_nodes"] == 1
    results = json.loads((uninterrupted / "results.json").read_text())
    assert results["test_images"] == 40 and (uninterrupted / "model" / "model.safetensors").is_file()
    assert "2 x cpu on 1 node(s)" in (uninterrupted / "train.log").read_text()


def test_a_requeued_job_continues_where_it_stopped(data, uninterrupted, tmp_path):
    """Requeued during epoch 2 (as on preemption or a node failure), the job runs the script again; its --resume
    continues from the epoch-1 checkpoint and the run ends with the weights of the job that was never stopped.
    Slurm holds a requeued job for two minutes before it may start again; the test lets it start at once."""
    out = tmp_path / "run"
    job_id = submit(data, out)
    deadline = time.time() + 240
    while "epoch  1/" not in ((out / "train.log").read_text() if (out / "train.log").is_file() else ""):
        assert time.time() < deadline and job(job_id).get("JobState") in ("PENDING", "RUNNING"), job(job_id)
        time.sleep(0.2)
    assert subprocess.run(["scontrol", "requeue", job_id], timeout=30).returncode == 0
    for _ in range(30):
        if job(job_id).get("JobState") == "PENDING":
            break
        time.sleep(1)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30, check=True)
    info = wait_for(job_id, out)
    assert info["Restarts"] == "1"
    log = (out / "train.log").read_text()
    assert "resumed" in log and "stopping" not in log
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3]
    a, b = load_file(uninterrupted / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)
