"""Publishing, tested up to the exact files that would be uploaded (the Hub cannot be reached from here)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file, save_file

from s10.model import S10Net
from tests.conftest import ROOT, App

MODEL_FILES = {"model.safetensors", "config.json", "README.md", "curves.png", "confusion_matrix.png",
               "misclassified.png", "misclassified.json", "misclassified.safetensors"}


def test_round_trip_is_identical_and_eval_mode(smoke_run, tmp_path):
    model = S10Net.from_pretrained(smoke_run / "model")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    model.save_pretrained(tmp_path)
    again = S10Net.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), again(x))
    assert again.config == model.config


def copy_model(smoke_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(smoke_run / "model", folder)
    return folder


def test_strict_loading_rejects_a_tampered_config(smoke_run, tmp_path):
    folder = copy_model(smoke_run, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_classes": 7}))
    with pytest.raises(ValueError, match="class names"):
        S10Net.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "backdoor": True}))
    with pytest.raises(ValueError, match="unknown keys"):
        S10Net.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({**config, "num_classes": 9, "class_names": list("abcdefghi")}))
    with pytest.raises(ValueError, match="size mismatch"):
        S10Net.from_pretrained(folder)


def test_strict_loading_rejects_a_missing_tensor(smoke_run, tmp_path):
    folder = copy_model(smoke_run, tmp_path)
    weights = load_file(folder / "model.safetensors")
    del weights["layer3.res.0.0.weight"]
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(ValueError, match="Missing key.*layer3.res.0.0.weight"):
        S10Net.from_pretrained(folder)


def test_pickle_only_folder_is_refused_never_unpickled(smoke_run, tmp_path, monkeypatch):
    folder = copy_model(smoke_run, tmp_path)
    torch.save(S10Net.from_pretrained(folder).state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        S10Net.from_pretrained(folder)


def test_dry_run_push_holds_exactly_the_repo_files(smoke_run, tmp_path):
    out = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "hub.push", str(smoke_run), "--repo-id", "someone/s10-test",
                           "--dry-run", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == MODEL_FILES
    card = ModelCard.load(out / "README.md")
    assert card.data.license == "mit" and card.data.pipeline_tag == "image-classification"
    assert card.data.datasets == ["cifar10"] and "accuracy" in card.data.metrics
    results = json.loads((smoke_run / "results.json").read_text())
    name, evals = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "s10-test"
    # One result (CIFAR-10, test split) with two metrics: plain and flip-TTA accuracy.
    assert {(e.dataset_type, e.dataset_split) for e in evals} == {("cifar10", "test")}
    figures = {e.metric_name: e.metric_value for e in evals}
    assert figures == {"Test accuracy": results["test_acc"], "Test accuracy (flip TTA)": results["test_acc_tta"]}
    assert len(card.data.to_dict()["model-index"][0]["results"]) == 1
    assert 'S10Net.from_pretrained("someone/s10-test")' in card.text
    assert f"{100 * results['test_acc']:.2f} %" in card.text
    assert not re.search(r"TODO|\{\{|\[More Information Needed\]|your[-_ ]?(user|name)", card.text, re.I)
    loaded = S10Net.from_pretrained(out)
    assert loaded.config.results["test_acc"] == results["test_acc"]


def test_push_without_a_token_exits_2_in_one_line(smoke_run, tmp_path):
    env = {**os.environ, "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "hub.push", str(smoke_run)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Hugging Face token" in lines[0]


def test_a_token_never_appears_in_output_or_files(smoke_run, tmp_path):
    secret = "hf_" + "S3cr3tT0kenNeverPrinted"
    env = {**os.environ, "HF_TOKEN": secret, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    push = subprocess.run([sys.executable, "-m", "hub.push", str(smoke_run)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)
    assert push.returncode == 2 and len(push.stderr.strip().splitlines()) == 1, push.stderr
    dry = subprocess.run([sys.executable, "-m", "hub.push", str(smoke_run), "--dry-run", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert dry.returncode == 0
    for text in (push.stdout, push.stderr, dry.stdout, dry.stderr):
        assert secret not in text
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_trainer_push_to_hub_failure_keeps_the_run(tmp_path):
    from tests.conftest import CIFAR_NAMES, make_tree, run_train

    data = make_tree(tmp_path / "data", classes=CIFAR_NAMES[:3], n_train=6, n_test=2)
    proc = run_train("--data", data, "--out", tmp_path / "run", "--smoke", "--batch-size", 16, "--epochs", 1,
                     "--no-progress-bar", "--push-to-hub", "someone/s10",
                     env={"HF_TOKEN": "", "HF_HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert "no Hugging Face token" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def space_bundle(smoke_run, tmp_path_factory, monkeypatch_module):
    import hub.space

    monkeypatch_module.setattr(hub.space, "RELEASED", smoke_run / "model")
    out = tmp_path_factory.mktemp("space") / "bundle"
    assert hub.space.main(["--space-id", "someone/s10-space", "--model-id", "someone/s10-model",
                           "--dry-run", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_space_bundle_holds_no_training_code(space_bundle):
    files = {str(p.relative_to(space_bundle)) for p in space_bundle.rglob("*") if p.is_file()}
    assert {"app.py", "README.md", "requirements.txt", "project.json", "s10/model.py", "s10/inference.py",
            "s10/cam.py", "release/model/model.safetensors"} <= files
    assert not {"s10/data.py", "s10/module.py", "fabric_train.py", "s10/evaluate.py"} & files
    for path in space_bundle.rglob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(lightning|pytorch_lightning|torchmetrics|fabric_train|"
                             r"s10\.(data|module|evaluate|lr_finder|report))\b", source, re.M), path
    requirements = (space_bundle / "requirements.txt").read_text()
    assert "lightning" not in requirements and "torchmetrics" not in requirements
    assert "download.pytorch.org/whl/cpu" in requirements and re.search(r"^torch==[\d.]+\+cpu$", requirements, re.M)
    readme = (space_bundle / "README.md").read_text()
    assert "fabric_train" not in readme and "```" not in readme


def test_space_readme_front_matter(space_bundle):
    from huggingface_hub import SpaceCard

    from hub.space import pins

    card = SpaceCard.load(space_bundle / "README.md")
    data = card.data
    assert data.sdk == "gradio" and data.sdk_version == pins()["gradio"] and data.app_file == "app.py"
    assert data.models == ["someone/s10-model"] and data.license == "mit"
    for key in ("title", "emoji", "colorFrom", "colorTo", "python_version", "short_description"):
        assert data.to_dict().get(key), key
    assert len(data.short_description) <= 60
    assert json.loads((space_bundle / "project.json").read_text())["model_repo"] == "someone/s10-model"


def test_bundled_app_answers_without_lightning(space_bundle, tmp_path):
    """A fresh process whose Python path holds only the bundle, with the training stack unimportable; the model repo
    cannot be reached (offline), so the app falls back to the model it ships with."""
    blocker = tmp_path / "blocked"
    blocker.mkdir()
    for name in ("lightning", "pytorch_lightning", "torchmetrics", "torchvision"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is not in the Space')\n")
    app = App(space_bundle / "app.py", env={"HF_HOME": str(tmp_path / "hf")}, cwd=tmp_path,
              pythonpath=f"{blocker}{os.pathsep}{space_bundle}")
    try:
        from gradio_client import handle_file

        result = app.client().predict(handle_file(str(space_bundle / "examples" / "cat.png")), 3,
                                      api_name="/predict")
        assert len(result["confidences"]) == 3
        assert "someone/s10-model" in app.output and "falling back" in app.output
    finally:
        app.stop()
