"""'None of the ten': the scores, the detector the released model folder ships, and its warning over HTTP."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from s10.model import S10Net
from s10.ood import MEASURES, SCORES, Detector, features_and_logits, fit_gaussian, score
from tests.conftest import RELEASED, ROOT
from tests.test_app import EXAMPLES

sys.path.insert(0, str(ROOT / "bench"))
import ood as ood_bench  # noqa: E402  (bench/ood.py: the generated set)

WARNING = "is unlike the pictures the model was trained on"


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(200)
    features = torch.randn(600, 4, generator=g) + 10 * torch.eye(3, 4)[labels]
    stats = fit_gaussian(features, labels, 3)
    at_means = score("mahalanobis", stats["means"], torch.zeros(3, 3), stats=stats)
    assert torch.allclose(at_means, torch.zeros(3), atol=1e-4)
    d = torch.tensor([[0.0, 0.0, 0.0, 3.0]])  # 3 unit standard deviations from every mean along the 4th axis
    far = score("mahalanobis", stats["means"][:1] + d, torch.zeros(1, 3), stats=stats)
    assert 7 < float(far) < 11  # 3^2, with the estimate's noise


def test_energy_and_msp_rank_a_confident_logit_vector_as_in_distribution():
    logits = torch.tensor([[12.0, 0, 0], [0.1, 0, 0]])
    for kind in ("msp", "energy"):
        s = score(kind, torch.zeros(2, 4), logits, temperature=1.5)
        assert s[0] < s[1], kind
    with pytest.raises(ValueError, match="unknown out-of-distribution score"):
        score("odin", torch.zeros(1, 4), logits)


def test_detector_round_trips_through_a_folder_and_a_missing_file_is_an_error(tmp_path):
    stats = {"means": torch.randn(10, 512), "precision": torch.eye(512)}
    detector = Detector("mahalanobis", 123.5, stats, {"keeps": 0.95})
    entry = detector.save(tmp_path)
    loaded = Detector.load(json.loads(json.dumps(entry)), tmp_path)
    assert loaded.kind == "mahalanobis" and loaded.threshold == 123.5 and loaded.measured == {"keeps": 0.95}
    assert all(torch.equal(loaded.stats[k], stats[k]) for k in stats)
    assert Detector.load({}, tmp_path) is None
    (tmp_path / entry["file"]).unlink()
    with pytest.raises(FileNotFoundError, match="statistics"):
        Detector.load(entry, tmp_path)


@pytest.fixture(scope="module")
def released():
    model = S10Net.from_pretrained(RELEASED).eval()
    return model, Detector.load(model.config.ood, RELEASED)


def test_the_released_model_ships_the_benchmarks_detector(released):
    model, detector = released
    bench = json.loads((ROOT / "bench" / "results" / "ood.json").read_text())
    assert detector is not None and detector.kind in SCORES
    name = bench["choice"]["score"]  # a score, or "knn-2k": the knn score on a sample of 2,000 training images
    assert detector.kind == name.split("-")[0] and detector.threshold == pytest.approx(bench["choice"]["threshold"])
    if name == f"knn-{ood_bench.KNN_SAMPLE // 1000}k":
        assert detector.stats["bank"].shape == (ood_bench.KNN_SAMPLE, 512)


def test_the_detector_keeps_cifar10_and_flags_generated_pictures(released):
    """On 1,000 seeded CIFAR-10 test images it fires about as often as its threshold says (5 %); on freshly generated
    pictures of each kind (another seed than the benchmark's) at least as often as the benchmark's table, less a
    margin for 60 pictures."""
    from s10.data import load_dataset
    from s10.inference import to_input

    model, detector = released
    cfg = model.config
    test = load_dataset(ROOT / ".data" / "cifar10").test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(2))[:1000]
    fired = detector.fires(*features_and_logits(model, model.normalize(test.images[pick])), cfg.temperature)
    assert float(fired.float().mean()) < 0.09
    bench = json.loads((ROOT / "bench" / "results" / "ood.json").read_text())
    row = next(r for r in bench["rows"] if r["score"] == bench["choice"]["score"])
    for kind, pictures in ood_bench.build_set(60, seed=7).items():
        x = torch.cat([to_input(im, cfg.mean, cfg.std, cfg.input_size) for im in pictures])
        rate = float(detector.fires(*features_and_logits(model, x), cfg.temperature).float().mean())
        assert rate >= (1 - row["kinds"][kind]["fpr95"]) - 0.2, (kind, rate)


def test_the_page_and_the_api_warn_for_a_picture_of_none_of_the_ten(released_server, tmp_path):
    """Over HTTP: /explain's note warns for generated pictures and a crop of a photo of a person, and not for the
    CIFAR-10 test images of the examples; the low-confidence hint is a separate note."""
    from gradio_client import handle_file

    client = released_server.client()
    odd = {"text.png": ood_bench.build_set(1, seed=3)["text"][0],
           "hopper.png": ood_bench.photo_sources()[0].crop((150, 60, 350, 260)),  # her face and cap
           "stripes.png": Image.fromarray(np.tile(np.repeat(np.array([[0], [255]], np.uint8), 4, 0), (8, 64))
                                          .astype(np.uint8)).convert("RGB")}
    warned = {}
    for name, picture in odd.items():
        picture.save(tmp_path / name)
        for maps in (False, True):
            _, _, _, note = client.predict(handle_file(str(tmp_path / name)), 3, maps, 3, "layer3", 0.5, "GradCAM",
                                           "top classes", api_name="/explain")
            warned[name, maps] = WARNING in note
            said = note
    assert all(warned.values()), warned
    shipped = json.loads((RELEASED / "config.json").read_text())["ood"]
    assert MEASURES[shipped["score"]].format(share=100 * shipped["keeps"]) in said, said  # what it measured, in words
    for path in EXAMPLES:
        _, _, _, note = client.predict(handle_file(str(path)), 3, False, 3, "layer3", 0.5, "GradCAM", "top classes",
                                       api_name="/explain")
        assert WARNING not in note, path.name


def test_the_warning_says_what_its_score_reads():
    """Each score's words on the page name what it reads: the logit scores (top probability, energy) say nothing of
    features or training images, the feature scores say features; the share is the threshold's."""
    assert set(MEASURES) == set(SCORES)
    for kind in ("msp", "energy"):
        said = Detector(kind, 0.0, measured={"keeps": 0.9}).measures()
        assert "features" not in said and "training" not in said and "90 %" in said, said
    for kind in ("mahalanobis", "knn"):
        assert "features" in Detector(kind, 0.0).measures() and "95 %" in Detector(kind, 0.0).measures()


def test_a_broken_detector_file_is_said_on_the_page_not_a_crash(tmp_path):
    """A model folder whose ood.safetensors is missing still serves; the page says the warning is off."""
    import shutil

    from tests.conftest import App

    folder = tmp_path / "model"
    shutil.copytree(RELEASED, folder)
    (folder / "ood.safetensors").unlink(missing_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config["ood"] = {**config["ood"], "file": "ood.safetensors"}
    (folder / "config.json").write_text(json.dumps(config))
    app = App(ROOT / "space" / "app.py", env={"S10_MODEL": str(folder), "GRADIO_TEMP_DIR": str(tmp_path / "cache")},
              cwd=ROOT)
    try:
        from gradio_client import handle_file

        label, _, _, note = app.client().predict(handle_file(str(EXAMPLES[0])), 3, False, 3, "layer3", 0.5,
                                                 "GradCAM", "top classes", api_name="/explain")
        assert len(label["confidences"]) == 3
        from urllib.request import urlopen

        with urlopen(app.url + "config") as page:
            assert "No warning for pictures of other things" in page.read().decode()
        assert "out-of-distribution statistics ood.safetensors are missing" in app.output
    finally:
        app.stop()


def test_the_maps_pass_gives_the_detector_the_same_features(released):
    """The page reads the detector's features from the CAM pass itself (no second forward pass): they equal a plain
    pass's, for the top classes and for one chosen class."""
    from s10.cam import DEFAULT_LAYER, DEFAULT_METHOD, class_maps, freeze
    from s10.inference import load_image, to_input

    model, _ = released
    cam_model = freeze(S10Net.from_pretrained(RELEASED))
    x = to_input(load_image(EXAMPLES[3]), model.config.mean, model.config.std)
    want_f, want_logits = features_and_logits(model, x)
    for classes in (3, [5]):
        _, scores, features = class_maps(cam_model, x, DEFAULT_LAYER, classes, DEFAULT_METHOD, with_features=True)
        assert torch.allclose(features[:1], want_f, atol=1e-4) and torch.allclose(scores[:1], want_logits, atol=1e-4)


def test_the_predict_command_flags_a_picture_of_none_of_the_ten(tmp_path):
    """`python -m s10.predict` reads the same detector as the app: the generated text and the crop of a photo of a
    person get "(unlike the training pictures?)", the CIFAR-10 examples do not; with the detector's statistics file
    missing (its config pointed at one that is not there, whatever detector the release ships) it still classifies
    and says the check is off."""
    import shutil
    import subprocess

    odd = [tmp_path / "text.png", tmp_path / "hopper.png"]
    ood_bench.build_set(1, seed=3)["text"][0].save(odd[0])
    ood_bench.photo_sources()[0].crop((150, 60, 350, 260)).save(odd[1])
    command = [sys.executable, "-m", "s10.predict", *map(str, odd), *map(str, EXAMPLES[:3]), "--model"]
    proc = subprocess.run([*command, str(RELEASED)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stderr.count("warning") == 0, proc.stderr
    flagged = {line.split(":")[0]: line.endswith("(unlike the training pictures?)") for line in proc.stdout.splitlines()}
    assert flagged == {**{str(p): True for p in odd}, **{str(p): False for p in EXAMPLES[:3]}}

    folder = tmp_path / "model"
    shutil.copytree(RELEASED, folder)
    (folder / "ood.safetensors").unlink(missing_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "ood": {**config["ood"], "file": "ood.safetensors"}}))
    proc = subprocess.run([*command, str(folder)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 5 and "(unlike the training pictures?)" not in proc.stdout
    assert "warning: no out-of-distribution check" in proc.stderr and "Traceback" not in proc.stderr
