"""The committed release: its record reproduces the README, its weights reproduce the figures, its examples."""

import json
import subprocess
import sys

import pytest

from s10.inference import load_image, probabilities, to_input, top_k
from s10.model import S10Net
from tests.conftest import CIFAR, ROOT

RELEASE = ROOT / "release"
pytestmark = pytest.mark.skipif(not (RELEASE / "model" / "model.safetensors").is_file(),
                                reason="no release yet: the 24-epoch release run has not finished")


def test_report_reproduces_the_readme_results_section():
    from s10.report import END, START, render

    readme = (ROOT / "README.md").read_text()
    section = readme.split(START, 1)[1].split(END, 1)[0]
    assert section == "\n" + render(RELEASE, ROOT)


def test_examples_are_classified_as_their_class():
    model = S10Net.from_pretrained(RELEASE / "model")
    cfg = model.config
    for path in sorted((ROOT / "space" / "examples").glob("*.png")):
        ranked = top_k(probabilities(model, to_input(load_image(path), cfg.mean, cfg.std)), cfg.class_names, 3)
        assert path.stem in [name for name, _ in ranked], (path.name, ranked)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason="needs the offline CIFAR-10 copy: make data")
def test_evaluate_recomputes_the_released_accuracies():
    proc = subprocess.run([sys.executable, "-m", "s10.evaluate", str(RELEASE / "model"), str(CIFAR)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    measured = json.loads(proc.stdout)
    results = json.loads((RELEASE / "results.json").read_text())
    for key in ("test_acc", "test_acc_tta", "exact_test_acc", "exact_test_acc_tta"):
        assert f"{100 * measured[key]:.2f}" == f"{100 * results[key]:.2f}", key
