"""Publishing, tested up to the exact files that would be uploaded (the Hub cannot be reached from here)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file, save_file

from s10.model import S10Net
from tests.conftest import ROOT, App

# `make test` runs two xdist workers (--dist loadgroup): this module's tests share one worker, so its module-scoped
# fixtures (servers, runs) are made once.
pytestmark = pytest.mark.xdist_group("hub")

MODEL_FILES = {"model.safetensors", "config.json", "README.md", "curves.png", "confusion_matrix.png",
               "misclassified.png", "misclassified.json", "misclassified.safetensors", "reliability.png"}
# (the release's folder adds ood.safetensors, the detector's statistics; a fresh run has no detector until
# bench/ood.py --ship writes one)
RELEASE = ROOT / "release"


def relative_links(markdown: str) -> set[str]:
    """The targets of the Markdown links and images, and of HTML src/href attributes, that are not URLs or anchors:
    the files the rendered page fetches from its own repo."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    targets += re.findall(r"""(?:src|href)=["']([^"']+)["']""", markdown)
    return {t.split("#")[0] for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#|/", t, re.I) and t.split("#")[0]}


@pytest.mark.parametrize("which", ["release", "fresh run"])
def test_every_file_the_model_card_links_is_uploaded(smoke_run, tmp_path, which):
    """The links come from the rendered card itself, not from a list: each relative link or image names a file in
    the folder that the push would upload."""
    run = RELEASE if which == "release" else smoke_run
    out = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "hub.push", str(run), "--dry-run", str(out)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    links = relative_links((out / "README.md").read_text())
    assert "reliability.png" in links and "curves.png" in links
    missing = sorted(name for name in links if not (out / name).is_file())
    assert not missing, f"the card links {missing}, which the push leaves out"


def test_the_uploaded_folder_carries_the_detector_its_config_names(tmp_path):
    """The release's push folder holds the out-of-distribution detector its config.json names (with its statistics
    file, for a detector that has one: Detector.load refuses a missing one), and a model and detector loaded from
    that folder alone warn for most of 20 generated pictures of none of the ten classes (4 of each kind of
    bench/ood.py, another seed than its own) and not for a CIFAR-10 example."""
    import json

    from s10.inference import load_image, to_input
    from s10.ood import Detector, features_and_logits

    out = tmp_path / "repo"
    proc = subprocess.run([sys.executable, "-m", "hub.push", str(RELEASE), "--dry-run", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    entry = json.loads((out / "config.json").read_text())["ood"]
    assert entry["score"] and (not entry.get("file") or (out / entry["file"]).is_file())
    model, detector = S10Net.from_pretrained(out), Detector.load(entry, out)
    sys.path.insert(0, str(ROOT / "bench"))
    import ood as ood_bench

    odd = [im for kind in ood_bench.build_set(4, seed=3).values() for im in kind]
    cat = load_image(ROOT / "space" / "examples" / "cat.png")
    x = torch.cat([to_input(im, model.config.mean, model.config.std) for im in (*odd, cat)])
    fires = detector.fires(*features_and_logits(model, x), model.config.temperature).tolist()
    assert sum(fires[:-1]) >= len(odd) / 2 and not fires[-1], fires


def test_every_file_the_space_readme_links_is_in_the_bundle(tmp_path):
    out = tmp_path / "space"
    proc = subprocess.run([sys.executable, "-m", "hub.space", "--dry-run", str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    links = relative_links((out / "README.md").read_text())
    assert links, "the Space README shows no picture"
    missing = sorted(name for name in links if not (out / name).is_file())
    assert not missing, f"the Space README links {missing}, which the bundle leaves out"


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
    assert card.data.datasets == ["uoft-cs/cifar10"] and "accuracy" in card.data.metrics
    results = json.loads((smoke_run / "results.json").read_text())
    name, evals = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "s10-test"
    # One result (CIFAR-10, test split) with two metrics: plain and flip-TTA accuracy.
    assert {(e.dataset_type, e.dataset_config, e.dataset_split) for e in evals} == {
        ("uoft-cs/cifar10", "plain_text", "test")}
    figures = {e.metric_name: e.metric_value for e in evals}
    assert figures == {"Test accuracy": results["test_acc"], "Test accuracy (flip TTA)": results["test_acc_tta"]}
    assert len(card.data.to_dict()["model-index"][0]["results"]) == 1
    assert 'S10Net.from_pretrained("someone/s10-test")' in card.text
    assert f"{100 * results['test_acc']:.2f} %" in card.text
    assert not re.search(r"TODO|\{\{ *\w+ *\}\}|\[More Information Needed\]|your[-_ ]?(user|name)", card.text, re.I)
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
                           "--model-revision", PINNED, "--dry-run", str(out)]) == 0
    return out


PINNED = "89abcdef0123456789abcdef0123456789abcdef"  # the model commit a bundle is made against


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
    assert "fabric_train" not in readme
    for block in re.findall(r"```\w*\n(.*?)```", readme, re.S):  # only the gradio_client snippet: no training
        assert not re.search(r"lightning|fabric|optim|backward|train", block), block


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
    assert data.datasets == ["uoft-cs/cifar10"] and data.suggested_hardware == "cpu-basic"
    assert {"image-classification", "cifar10", "grad-cam"} <= set(data.tags)
    project = json.loads((space_bundle / "project.json").read_text())
    assert project["model_repo"] == "someone/s10-model" and project["model_revision"] == PINNED
    assert 'Client("someone/s10-space")' in card.text  # the snippet names the Space it is bundled for


def test_the_bundled_space_loads_the_pinned_model_revision(space_bundle, smoke_run, tmp_path):
    """The model repo has moved on (its main is another commit): the bundled app still loads the commit it was
    bundled against, from the HF cache with the Hub offline, and says which."""
    repo = tmp_path / "hf" / "hub" / "models--someone--s10-model"
    config = json.loads((smoke_run / "model" / "config.json").read_text())
    for commit, temperature in ((PINNED, 0.5), ("f" * 40, 2.0)):
        shutil.copytree(smoke_run / "model", repo / "snapshots" / commit)
        (repo / "snapshots" / commit / "config.json").write_text(json.dumps({**config, "temperature": temperature}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("f" * 40)
    code = "import app; print('SOURCE', app.MODEL_SOURCE); print('T', app.CONFIG.temperature)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=space_bundle, capture_output=True, text=True,
                          timeout=180, env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
                                            "PYTHONPATH": str(space_bundle), "GRADIO_TEMP_DIR": str(tmp_path / "g")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"SOURCE someone/s10-model@{PINNED[:12]} (the HF cache's copy" in proc.stdout and "T 0.5" in proc.stdout


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


@pytest.mark.slow
def test_the_bundle_runs_alone_in_a_fresh_virtual_environment(space_bundle, tmp_path):
    """A new virtual environment with only the bundle's requirements.txt and gradio at its sdk_version (no Lightning,
    no torchvision, no torchmetrics), the Hub out of reach: the app falls back to the weights it ships and answers
    /predict over HTTP. The CPU build of torch that requirements.txt pins comes from download.pytorch.org, which this
    machine cannot reach; the venv takes the CPU build on this machine's disk (torch 2.13.0+cpu) in its place."""
    from gradio_client import handle_file
    from huggingface_hub import SpaceCard

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    lines = [line.split("#")[0].strip() for line in (space_bundle / "requirements.txt").read_text().splitlines()]
    lines = ["torch==2.13.0+cpu" if line.startswith("torch==") else line for line in lines
             if line and not line.startswith("--extra-index-url")]
    sdk = SpaceCard.load(space_bundle / "README.md").data.sdk_version
    (tmp_path / "requirements.txt").write_text("\n".join([*lines, f"gradio=={sdk}"]) + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-r",
                              str(tmp_path / "requirements.txt")],  # no .pyc of every file: the app imports few
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    for name in ("lightning", "torchvision", "torchmetrics"):
        assert subprocess.run([str(python), "-c", f"import {name}"], capture_output=True).returncode != 0, name
    app = App(space_bundle / "app.py", env={"HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": ""}, cwd=space_bundle,
              python=python, timeout=300)
    try:
        result = app.client().predict(handle_file(str(space_bundle / "examples" / "cat.png")), 3,
                                      api_name="/predict")
        assert len(result["confidences"]) == 3 and "falling back" in app.output
    finally:
        app.stop()


@pytest.mark.parametrize("where", ["HF cache", "release folder"])
def test_torch_hub_load_returns_the_released_model(tmp_path, where):
    """`torch.hub.load(repo, "s10_cifar10", source="local")` with the Hub offline: the model repo's copy in the HF
    cache (the layout hf_hub_download leaves) when there is one, else the repository's release/model."""
    from hub.settings import load as project_settings
    from tests.test_app_service import prefill_hf_cache

    hf_home = tmp_path / "hf"
    config = json.loads((RELEASE / "model" / "config.json").read_text())
    if where == "HF cache":  # the cached copy is told apart by its temperature
        prefill_hf_cache(hf_home, project_settings().model_repo, RELEASE / "model")
        cached = next(hf_home.glob("hub/models--*/snapshots/*/config.json"))
        config["temperature"] = 0.5
        cached.write_text(json.dumps(config))
    code = ("import sys, torch; m = torch.hub.load(sys.argv[1], 's10_cifar10', source='local'); "
            "print(m.training, m.config.temperature, sum(p.numel() for p in m.parameters()))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", str(config["temperature"]), "6573130"]


def test_card_metadata_reads_back_as_the_hub_reads_it(tmp_path):
    """The release's card through huggingface_hub's own readers: the Hub's dataset id and config, the library name
    the PyTorchModelHubMixin gives S10Net, its tags, arXiv links (the Hub turns them into paper tags), a citation."""
    from huggingface_hub import metadata_load

    card_path = RELEASE / "model" / "README.md"
    meta = metadata_load(card_path)
    assert meta["datasets"] == ["uoft-cs/cifar10"] and meta["library_name"] == "s10"
    assert {"pytorch_model_hub_mixin", "model_hub_mixin"} <= set(meta["tags"])
    mixin_card = S10Net()._hub_mixin_info  # what the mixin would write on its own
    assert mixin_card.model_card_data.library_name == meta["library_name"]
    result = meta["model-index"][0]["results"][0]["dataset"]
    assert (result["type"], result["config"], result["split"]) == ("uoft-cs/cifar10", "plain_text", "test")
    text = ModelCard.load(card_path).text
    for paper in ("1708.04552", "1706.04599", "1610.02391", "1710.11063"):
        assert f"https://arxiv.org/abs/{paper}" in text, paper
    assert "@software{" in text and "```bibtex" in text


def test_the_card_cites_the_options_its_recipe_used_and_no_other():
    """The model card's references follow the run's recipe: the course's cites One Cycle, the LR range test and
    label smoothing; Page's (SGD, a linear schedule, a given LR, no smoothing) cites none of them."""
    from hub.card import recipe_references
    from s10.module import RECIPES

    papers = {"One Cycle": "1708.07120", "range test": "1506.01186", "label smoothing": "1512.00567",
              "alternating flip": "2404.00498", "ghost batch norm": "1705.08741"}
    course = recipe_references(RECIPES["course"]["values"], find_lr=True)
    page = recipe_references(RECIPES["page"]["values"], find_lr=False)
    tricks = recipe_references(RECIPES["tricks"]["values"], find_lr=False)
    cited = {name: {n for n, paper in papers.items() if paper in refs}
             for name, refs in (("course", course), ("page", page), ("tricks", tricks))}
    assert cited == {"course": {"One Cycle", "range test", "label smoothing"}, "page": set(),
                     "tricks": {"label smoothing", "alternating flip", "ghost batch norm"}}
    release = json.loads((RELEASE / "config.json").read_text())
    assert recipe_references(release["recipe"], release["args"]["find_lr"]) in ModelCard.load(
        RELEASE / "model" / "README.md").text


def test_the_committed_card_is_what_the_release_renders(tmp_path):
    """release/model/README.md is what `python -m hub.card release` writes from the committed record (its seeds'
    spread included), not a card left over from before a change to the record. Rendered the way a clean clone would,
    whatever its environment: with the publisher's overrides set (they name the uploaded card, not the committed one)."""
    run = tmp_path / "release"
    shutil.copytree(RELEASE, run, ignore=lambda folder, names: {"model.safetensors", "misclassified.safetensors",
                                                                 "README.md"} & set(names))
    env = {**os.environ, "S10_GITHUB_URL": "https://github.com/someone/fork", "S10_HF_USER": "someone"}
    proc = subprocess.run([sys.executable, "-m", "hub.card", str(run)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (run / "model" / "README.md").read_text() == (RELEASE / "model" / "README.md").read_text()


def test_the_code_link_is_a_page_a_reader_can_open(tmp_path):
    """The card's and the Space's link to the training code comes from `git remote get-url origin` only when that is
    a web page: a clone of a folder on disk (as CI clones) links project.json's URL, not the folder's path."""
    from hub.settings import git_remote_url, load

    def git(*args, cwd):
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, timeout=60)

    (tmp_path / "origin").mkdir()
    git("init", "-q", cwd=tmp_path / "origin")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x", cwd=tmp_path / "origin")
    git("clone", "-q", str(tmp_path / "origin"), str(tmp_path / "clone"), cwd=tmp_path)
    clone = tmp_path / "clone"
    assert git_remote_url(clone) is None
    for remote, page in [("git@github.com:me/s10.git", "https://github.com/me/s10"),
                         ("ssh://git@github.com/me/s10.git", "https://github.com/me/s10"),
                         ("https://github.com/me/s10.git", "https://github.com/me/s10"),
                         (f"file://{tmp_path / 'origin'}", None)]:
        git("remote", "set-url", "origin", remote, cwd=clone)
        assert git_remote_url(clone) == page, remote
    committed = json.loads((ROOT / "project.json").read_text())["github_url"]
    assert load(committed=True).github_url == committed


def test_the_card_gives_the_recipe_spread_beside_its_seed(smoke_run, tmp_path):
    """With the seeds' record beside the run (make seeds-record), the card says which seed these weights are and what
    the recipe scores over its seeds; with one seed or none, nothing."""
    from hub.card import build_card
    from s10 import seeds
    from tests.test_seeds import fake_run, same_data_as

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    assert "of their recipe" not in build_card(run).text
    config = json.loads((run / "config.json").read_text())
    given = None if config["args"].get("find_lr") else config["recipe"]["max_lr"]  # the smoke run's peak LR is given
    runs = [fake_run(tmp_path / f"s{k}", k, acc, acc + 0.005, recipe=config["recipe"],
                     precision=config["args"]["precision"], max_lr=given, **same_data_as(run))
            for k, acc in enumerate((0.9401, 0.9432, 0.9388))]
    seeds.record(runs, run / "seeds")
    assert ("These weights are seed 0 of their recipe; over its 3 seeds (0, 1, 2), the recipe scores "
            "**94.07 % +- 0.23** (94.57 % +- 0.23 with flip TTA)") in build_card(run).text


def test_the_model_card_snippet_runs_as_written(tmp_path):
    """The card's Python snippet, as written, in a fresh directory holding a cat.jpg, with the Hub offline and the
    model repo in the HF cache (the layout hf_hub_download leaves): it prints calibrated top-3 labels. The card's
    command line too, which adds the detector's mark."""
    from tests.test_app_service import prefill_hf_cache

    text = (RELEASE / "model" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    repo_id = re.search(r'from_pretrained\("([^"]+)"\)', code).group(1)
    hf_home, work = tmp_path / "hf", tmp_path / "work"
    prefill_hf_cache(hf_home, repo_id, RELEASE / "model")
    work.mkdir()
    from PIL import Image

    Image.open(sorted((ROOT / "space" / "examples").glob("*cat*.png"))[0]).convert("RGB").resize((256, 256)).save(
        work / "cat.jpg")
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = eval(proc.stdout.strip())  # a printed list of (label, probability)
    names = json.loads((RELEASE / "model" / "config.json").read_text())["class_names"]
    assert len(top) == 3 and all(label in names for label, _ in top) and top[0][0] == "cat"
    assert 0 < sum(p for _, p in top) <= 1 + 1e-6 and top[0][1] >= top[1][1] >= top[2][1]

    # The card's command line, as written, from the same cache: the detector's statistics come with the model, so a
    # picture of none of the ten is marked and the cat is not.
    command = re.search(r"`(python -m s10\.predict [^`]+)`", text).group(1).split()
    assert command[3:] == ["photo.jpg", "--model", repo_id], command
    shutil.copy(work / "cat.jpg", work / "photo.jpg")
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def run():
        return subprocess.run([sys.executable, *command[1:]], cwd=work, capture_output=True, text=True, timeout=120,
                              env=env)

    proc = run()
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stdout.startswith("photo.jpg: cat ") and "(unlike the training pictures?)" not in proc.stdout, proc.stdout
    from tests.test_ood import ood_bench  # bench/ood.py's generated pictures

    ood_bench.build_set(1, seed=3)["text"][0].save(work / "photo.jpg")
    proc = run()
    assert proc.returncode == 0 and proc.stdout.strip().endswith("(unlike the training pictures?)"), (proc.stdout, proc.stderr)
