"""The app as a public service: every combination of options the page offers (read from the page itself), over HTTP
as well as in process; many clients at once; a cache that empties on schedule; where the model comes from."""

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from s10.model import S10Net
from tests.conftest import ROOT, App

# `make test` runs two xdist workers (--dist loadgroup): this module's tests share one worker, so its module-scoped
# fixtures (servers, runs) are made once.
pytestmark = pytest.mark.xdist_group("app_service")
from tests.test_app import EXAMPLES, encode, import_app

GALLERY_SIZES = (1, 2, 10)


def choices(component) -> list:
    """The values a dropdown of the page offers."""
    return [value for _, value in component.choices]


def combinations(app) -> list[tuple[str, str]]:
    """Every (method, layer) the page offers."""
    return [(m, layer) for m in choices(app.method) for layer in choices(app.layer)]


def picture(path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def test_every_offered_combination_in_process(released_app, monkeypatch):
    """Each method at each layer, for the top classes and for each class the page lists, and the two-way mistakes
    gallery of 1, 2 and 10 images: the right number of maps, each finite, in [0, 1] and input-sized, and the right
    number of pictures, captioned."""
    app = released_app
    real = app.class_maps
    seen_maps = []

    def checked(model, x, layer, class_idx, method, with_scores=False, with_features=False):
        cams, scores, features = real(model, x, layer, class_idx, method, with_features=True)
        n = class_idx * len(x) if isinstance(class_idx, int) else len(class_idx)
        assert cams.shape == (n, 32, 32) and np.isfinite(cams).all(), (method, layer, cams.shape)
        assert cams.min() >= 0 and cams.max() <= 1, (method, layer)
        assert features.shape == (len(cams), 512) and torch.isfinite(features).all()
        seen_maps.append((method, layer))
        if with_features:
            return cams, scores, features
        return (cams, scores) if with_scores else cams

    monkeypatch.setattr(app, "class_maps", checked)
    targets = choices(app.target)
    assert targets[0] == app.TOP_CLASSES and sorted(targets[1:]) == sorted(app.CLASSES)
    for method, layer in combinations(app):
        for target in targets:
            label, gallery, seen, _ = app.explain(str(EXAMPLES[3]), 3, True, 3, layer, 0.5, method, target)
            assert len(label) == 3 and len(gallery) == (3 if target == app.TOP_CLASSES else 1), (method, target)
            if target != app.TOP_CLASSES:
                assert gallery[0][1].startswith(f"{target} (")
            assert all(picture(path).shape == (224, 224, 3) for path, _ in gallery)
        for n in GALLERY_SIZES:
            mistakes = app.misclassified(n, True, layer, 0.5, method)
            assert [c.split(":")[0] for _, c in mistakes] == ["true", "predicted"] * n, (method, layer, n)
    assert len(seen_maps) == len(combinations(app)) * (len(targets) + len(GALLERY_SIZES))
    assert {(m, layer) for m, layer in seen_maps} == set(combinations(app))
    # The sliders' ends: no map at all (opacity 0) and the map alone (opacity 1); k and maps up to 10.
    for opacity in (0, 1):
        _, gallery, _, _ = app.explain(str(EXAMPLES[0]), 10, True, 10, app.LAYER, opacity, app.DEFAULT_METHOD)
        assert len(gallery) == 10


def test_overlays_keep_their_look_as_jpeg(released_app):
    """The overlays go out as JPEG (quality 90, no chroma subsampling): decoded, each pixel stays within a few grey
    levels of the lossless picture; the 32x32 view is PNG, pixel for pixel."""
    from s10.cam import class_maps, overlay, shown
    from s10.inference import load_image, to_input

    app = released_app
    cat = load_image(EXAMPLES[3])
    x = to_input(cat, app.CONFIG.mean, app.CONFIG.std)
    for cam in class_maps(app.CAM_MODEL, x, app.LAYER, 3):
        lossless = np.asarray(overlay(shown(cat), cam, 0.5)).astype(int)
        sent = picture(app.served(overlay(shown(cat), cam, 0.5))).astype(int)
        diff = np.abs(sent - lossless)
        assert diff.mean() < 3 and np.percentile(diff, 99) < 12, (diff.mean(), diff.max())
    view = shown(cat)
    assert np.array_equal(picture(app.served(view, lossless=True)), np.asarray(view))


def answer(client, job):
    """One request, as the page's API takes it: (label, [(pixels, caption)...]), every picture decoded."""
    from gradio_client import handle_file

    kind, *args = job
    if kind == "predict":
        return client.predict(handle_file(str(args[0])), args[1], api_name="/predict"), []
    if kind == "gallery":
        gallery = client.predict(*args, api_name="/misclassified")
        return None, [(picture(g["image"]), g["caption"]) for g in gallery]
    label, gallery, seen, note = client.predict(handle_file(str(args[0])), *args[1:], api_name="/explain")
    return (label, note), [(picture(g["image"]), g["caption"]) for g in gallery] + [(picture(seen), "seen")]


def test_every_offered_combination_over_http(released_app, released_server):
    """The 72 combinations of method, layer and request (maps for the top classes, for one class, the 10-image
    mistakes gallery explained both ways), generated from the page's own choices, through the real server."""
    client = released_server.client()
    classes = choices(released_app.target)[1:]
    for i, (method, layer) in enumerate(combinations(released_app)):
        for target, n_maps in (("top classes", 3), (classes[i % len(classes)], 1)):
            (label, _), pictures = answer(client, ("explain", EXAMPLES[i % 10], 3, True, 3, layer, 0.5, method,
                                                   target))
            assert len(label["confidences"]) == 3 and len(pictures) == n_maps + 1, (method, layer, target)
            assert all(p.shape == (224, 224, 3) for p, _ in pictures)
        _, mistakes = answer(client, ("gallery", 10, True, layer, 0.5, method))
        assert len(mistakes) == 20 and all(p.shape == (224, 224, 3) for p, _ in mistakes), (method, layer)
    assert "Traceback" not in released_server.output


def concurrently(server, jobs_per_client: list[list]):
    """Each client (its own gradio_client.Client, its own thread) runs its jobs: [(job, answer or the exception)]."""
    clients = [server.client() for _ in jobs_per_client]
    results, lock = [], threading.Lock()

    def run(n):
        for job in jobs_per_client[n]:
            try:
                got = answer(clients[n], job)
            except Exception as err:  # noqa: BLE001 - every failure is a finding
                got = err
            with lock:
                results.append((job, got))

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(run, range(len(clients))))
    return results


def assert_same(job, got, want):
    assert not isinstance(got, Exception), f"{job}: {type(got).__name__}: {got}"
    assert got[0] == want[0], job
    assert [c for _, c in got[1]] == [c for _, c in want[1]], job
    for (a, caption), (b, _) in zip(got[1], want[1]):
        assert np.array_equal(a, b), (job, caption)


def test_many_clients_get_whole_and_right_pictures(released_server):
    """16 clients asking three times each for the same example with maps on, then 16 clients with mixed requests
    (every one of 16 kinds asked by 4 clients at once): no error, and every picture decodes and equals the one
    answered to a single client. (Gradio's own way of returning a PIL image rewrote the cached file in place while
    others downloaded it: truncated files.)"""
    client = released_server.client()
    same = ("explain", EXAMPLES[3], 3, True, 3, "layer3", 0.5, "GradCAM", "top classes")
    want = answer(client, same)
    results = concurrently(released_server, [[same] * 3] * 16)
    assert len(results) == 16 * 3
    for job, got in results:
        assert_same(job, got, want)

    methods, layers = ["GradCAM", "FinerCAM", "XGradCAM", "GradCAM"], ["prep", "layer1.res", "layer2", "layer3"]
    jobs = []
    for i in range(16):
        kind = ("explain", "explain+maps", "predict", "gallery")[i % 4]
        if kind == "predict":
            jobs.append(("predict", EXAMPLES[i % 10], 1 + i % 10))
        elif kind == "gallery":
            jobs.append(("gallery", 1 + i % 10, i % 8 == 3, layers[i % 4], 0.5, methods[i % 4]))
        else:
            jobs.append(("explain", EXAMPLES[i % 10], 3, kind == "explain+maps", 3, layers[i % 4], 0.4,
                         methods[(i // 4) % 4], "top classes" if i % 3 else "dog"))
    wanted = {job: answer(client, job) for job in jobs}
    mark = len(released_server.lines)
    results = concurrently(released_server, [(jobs[n:] + jobs[:n])[:4] for n in range(16)])
    assert len(results) == 16 * 4
    for job, got in results:
        assert_same(job, got, wanted[job])
    in_flight = [int(line.rsplit(":", 1)[1].strip(" )\n")) for line in released_server.lines[mark:]
                 if "in flight" in line]
    assert max(in_flight) >= 2, in_flight  # the maps really were computed side by side


def test_transparent_upload_over_http_goes_on_white(server, smoke_run, tmp_path):
    """Through the real upload path (gradio's Image component first), a transparent PNG is classified as the same
    picture on white, as the app's own loader makes it."""
    from gradio_client import handle_file

    from s10.inference import probabilities, to_input

    clear = tmp_path / "clear.png"
    clear.write_bytes(encode(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"))
    got = server.client().predict(handle_file(str(clear)), 10, api_name="/predict")
    model = S10Net.from_pretrained(smoke_run / "model")
    probs = probabilities(model, to_input(Image.new("RGB", (40, 40), "white"), model.config.mean,
                                          model.config.std))[0]
    want = {name: float(p) for name, p in zip(model.config.class_names, probs)}
    for entry in got["confidences"]:
        assert entry["confidence"] == pytest.approx(want[entry["label"]], abs=1e-5)


def cached_files(cache) -> list:
    return [p for p in cache.rglob("*") if p.is_file()]


def test_cache_is_emptied_on_schedule(smoke_run, tmp_path):
    """With S10_DELETE_CACHE=1,2 the uploads and pictures of a request are gone a few seconds later, and the app
    still answers (gradio's delete_cache; the example pictures of the page stay)."""
    cache = tmp_path / "cache"
    app = App(ROOT / "space" / "app.py", env={"S10_MODEL": str(smoke_run / "model"), "GRADIO_TEMP_DIR": str(cache),
                                              "S10_DELETE_CACHE": "1,2", "HF_HOME": str(tmp_path / "hf")}, cwd=ROOT)
    try:
        client = app.client()
        page = set(cached_files(cache))  # the example pictures, which the page keeps
        for i in range(3):
            answer(client, ("explain", EXAMPLES[i], 3, True, 3, "layer2", 0.5, "GradCAM", "top classes"))
        made = [p for p in cached_files(cache) if p not in page]
        assert len(made) >= 3  # maps and 32x32 views (an identical picture is one file)
        deadline = time.time() + 15
        while time.time() < deadline and any(p.exists() for p in made):
            time.sleep(0.5)
        assert not [p for p in made if p.exists()]
        _, pictures = answer(client, ("explain", EXAMPLES[0], 3, True, 3, "layer2", 0.5, "GradCAM", "top classes"))
        assert len(pictures) == 4
    finally:
        app.stop()


# -- where the model comes from --------------------------------------------------------------------------------------


def prefill_hf_cache(hf_home, repo_id: str, folder) -> None:
    """The layout hf_hub_download leaves: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_unreachable_takes_the_cached_copy_and_says_so(smoke_run, tmp_path):
    """As on a Space whose Hub is down: not declared offline, the Hub refusing connections, the HF cache holding the
    model: the app loads the cached copy, not the released folder, and says which."""
    from tests.conftest import free_port

    prefill_hf_cache(tmp_path / "hf", "someone/s10-remote", smoke_run / "model")
    proc = import_app(tmp_path, {"S10_MODEL": "someone/s10-remote", "HF_HUB_OFFLINE": "0",
                                 "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert proc.returncode == 0, proc.stderr
    assert "SOURCE someone/s10-remote (the HF cache's copy: 127.0.0.1" in proc.stdout, proc.stdout
    assert "falling back" not in proc.stderr and "the Hub cannot be reached" in proc.stderr


def test_a_folder_under_home_is_a_folder(smoke_run, tmp_path):
    home = tmp_path / "home"
    shutil.copytree(smoke_run / "model", home / "my-model")
    proc = import_app(tmp_path, {"S10_MODEL": "~/my-model", "HOME": str(home)})
    assert proc.returncode == 0, proc.stderr
    assert f"SOURCE {home / 'my-model'}" in proc.stdout and "falling back" not in proc.stderr


def test_a_broken_misclassified_pack_is_said_not_silent(smoke_run, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(smoke_run / "model", folder)
    (folder / "misclassified.json").write_text("{not json")
    code = ("import importlib.util, sys; sys.path.insert(0, %r); "
            "spec = importlib.util.spec_from_file_location('app', %r); app = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(app); print('PROBLEM', app.PACK_PROBLEM); "
            "print('PAGE', 'misclassified-problem' in str(app.demo.config))"
            % (str(ROOT), str(ROOT / "space" / "app.py")))
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "S10_MODEL": str(folder)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "PROBLEM the model's misclassified pack could not be loaded (JSONDecodeError" in proc.stdout
    assert "PAGE True" in proc.stdout and "misclassified pack could not be loaded" in proc.stderr


def test_probabilities_of_a_batch_are_one_row_per_image():
    from s10.inference import probabilities

    model = S10Net().eval()
    x = torch.randn(3, 3, 32, 32)
    probs = probabilities(model, x)
    assert probs.shape == (3, 10)
    for i in range(3):
        torch.testing.assert_close(probs[i], probabilities(model, x[i:i + 1])[0], atol=1e-5, rtol=0)
