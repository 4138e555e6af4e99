"""The app's pure functions, its model resolution, and the real server driven by gradio_client."""

import io
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s10.cam import CAM_METHODS, CamError, class_maps, freeze
from s10.inference import ImageError, load_image, to_input, top_k
from s10.model import CIFAR10_MEAN, CIFAR10_STD, S10Net
from tests.conftest import CIFAR_NAMES, RELEASED, ROOT, system_chromium

EXAMPLES = sorted((ROOT / "space" / "examples").glob("*.png"))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def expected(rgb) -> torch.Tensor:
    """The normalised value of a flat colour."""
    return (torch.tensor(rgb, dtype=torch.float32) / 255 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)


FLAT = (200, 100, 50)
KINDS = {
    "png-rgb": lambda: encode(Image.new("RGB", (50, 40), FLAT), "PNG"),
    "jpeg": lambda: encode(Image.new("RGB", (640, 480), FLAT), "JPEG", quality=100),
    "webp": lambda: encode(Image.new("RGB", (64, 64), FLAT), "WEBP", lossless=True),
    "bmp": lambda: encode(Image.new("RGB", (33, 90), FLAT), "BMP"),
    "tiff": lambda: encode(Image.new("RGB", (40, 40), FLAT), "TIFF"),
    "gif-palette": lambda: encode(Image.new("RGB", (40, 40), FLAT).convert("P"), "GIF"),
    "cmyk-jpeg": lambda: encode(Image.new("RGB", (40, 40), FLAT).convert("CMYK"), "JPEG", quality=100),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_format_becomes_a_normalised_input(kind):
    x = to_input(load_image(KINDS[kind]()), CIFAR10_MEAN, CIFAR10_STD)
    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    tol = 0.12 if "jpeg" in kind or "gif" in kind else 1e-4  # lossy or palette formats move colours a little
    torch.testing.assert_close(x[0].mean((1, 2)), expected(FLAT), atol=tol, rtol=0)


def test_transparency_goes_on_white_and_greyscale_and_16_bit():
    clear = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    x = to_input(load_image(encode(clear, "PNG")), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(x[0].mean((1, 2)), expected((255, 255, 255)), atol=1e-4, rtol=0)
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 255, 0] * 256)
    x = to_input(load_image(encode(palette, "PNG", transparency=0)), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(x[0].mean((1, 2)), expected((255, 255, 255)), atol=1e-4, rtol=0)
    grey = to_input(load_image(encode(Image.new("L", (40, 40), 128), "PNG")), CIFAR10_MEAN, CIFAR10_STD)
    torch.testing.assert_close(grey[0].mean((1, 2)), expected((128, 128, 128)), atol=1e-4, rtol=0)
    ramp = Image.fromarray(np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1)), "I;16")
    im = load_image(encode(ramp, "PNG"))
    assert im.mode == "RGB" and np.asarray(im)[0, 0, 0] == 0 and np.asarray(im)[0, -1, 0] == 255


def test_exif_orientation_is_applied():
    raw = Image.new("RGB", (64, 32), (255, 0, 0))
    raw.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: left (red) goes to the top
    im = load_image(encode(raw, "JPEG", quality=95, exif=exif.tobytes()))
    a = np.asarray(im).astype(int)
    assert im.size == (32, 64)
    assert a[5, 16, 0] > 200 and a[5, 16, 2] < 60 and a[-5, 16, 2] > 200


def test_animated_gif_uses_the_first_frame_and_says_so():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    notes = []
    im = load_image(buf.getvalue(), notes=notes)
    assert np.asarray(im)[0, 0, 0] > 200 and "first frame" in notes[0]


def test_any_aspect_ratio_is_centre_cropped():
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    wide.paste((255, 255, 255), (100, 0, 200, 100))  # the centre square is white
    x = to_input(load_image(encode(wide, "PNG")), CIFAR10_MEAN, CIFAR10_STD)
    # Lanczos reads a pixel or two beyond the crop box, so only the outermost columns may darken.
    torch.testing.assert_close(x[0, :, :, 2:-2].mean((1, 2)), expected((255, 255, 255)), atol=0.02, rtol=0)


@pytest.mark.parametrize("data, message", [
    (None, "no image"),
    (b"", "empty"),
    (bytes(range(256)) * 4, "not an image"),
    (b"this is a text file, renamed to .png\n", "not an image"),
    ("truncated", "damaged or truncated"),
    ("1x1", "at least 8"),
    ("3x900", "at least 8"),
    ("huge", "the image is 200 megapixels; the most that can be read is 179 megapixels"),
])
def test_bad_uploads_are_clear_errors(data, message):
    if data == "truncated":
        data = encode(Image.new("RGB", (300, 300), FLAT), "JPEG")[:400]
    elif data == "1x1":
        data = encode(Image.new("RGB", (1, 1)), "PNG")
    elif data == "3x900":
        data = encode(Image.new("RGB", (3, 900)), "PNG")
    elif data == "huge":
        data = png_header(20_000, 10_000)
    with pytest.raises(ImageError, match=re.escape(message) if data else message):
        load_image(data)


def png_header(width, height):
    """A PNG that declares width x height pixels (8-bit greyscale) and holds one empty compressed row: what a
    decoder sees first of a file that large."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("size, kind", [((8000, 6000), "JPEG"), ((12000, 9000), "JPEG"), ((12000, 9000), "PNG")])
def test_phone_photos_are_classified(size, kind):
    """48- and 108-megapixel photos (today's phone modes), past the old 40-MP limit and Pillow's warning: read,
    the JPEG at a reduced scale, and become the network's input."""
    im = Image.new("L" if kind == "PNG" else "RGB", size, 90)
    im.paste(200, (size[0] // 3, 0, 2 * size[0] // 3, size[1]))  # a bright band down the middle
    picture = load_image(encode(im, kind, **({"quality": 80} if kind == "JPEG" else {})))
    assert picture.mode == "RGB" and picture.size[0] / picture.size[1] == pytest.approx(size[0] / size[1], rel=0.01)
    if kind == "JPEG":
        assert picture.size[0] <= size[0] // 4  # decoded at a reduced scale
    x = to_input(picture, CIFAR10_MEAN, CIFAR10_STD)
    assert x.shape == (1, 3, 32, 32) and x[0, :, :, 16].mean() > x[0, :, :, 1].mean()


def test_top_k_is_sorted_sums_to_at_most_one_and_has_k_entries():
    probs = torch.randn(10).softmax(-1)
    names = [f"c{i}" for i in range(10)]
    for k in range(1, 11):
        ranked = top_k(probs, names, k)
        values = [p for _, p in ranked]
        assert len(ranked) == k and values == sorted(values, reverse=True) and sum(values) <= 1 + 1e-6
    for bad in (0, 11, 2.5, "three"):
        with pytest.raises(ImageError, match="top-k"):
            top_k(probs, names, bad)


@pytest.fixture(scope="module")
def model():
    """The released (trained) weights: CAMs of a random network say little."""
    return freeze(S10Net.from_pretrained(RELEASED))


def assert_clean(model, before):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert not getattr(m, "_full_backward_hooks", None) and not getattr(m, "_backward_pre_hooks", None)
    assert not model.training
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def example_input(name: str, model) -> torch.Tensor:
    return to_input(load_image(ROOT / "space" / "examples" / f"{name}.png"), model.config.mean, model.config.std)


@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_each_method_maps_the_input_size_in_0_1_per_class_and_leaves_the_model_clean(model, method):
    x = example_input("horse", model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cams = class_maps(model, x, "layer1", [7, 4, 3], method)  # horse, deer, cat
    assert cams.shape == (3, 32, 32) and cams.dtype == np.float32
    assert cams.min() >= 0 and cams.max() <= 1 and cams.max() > 0.5
    assert not np.allclose(cams[0], cams[1], atol=1e-2) and not np.allclose(cams[0], cams[2], atol=1e-2)
    assert_clean(model, before)


def test_methods_and_layers_give_different_maps(model):
    x = example_input("ship", model)
    maps = {(m, layer): class_maps(model, x, layer, [8], m)[0]
            for m in CAM_METHODS for layer in ("layer3", "layer3.res")}
    keys = list(maps)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert not np.allclose(maps[a], maps[b], atol=1e-3), (a, b)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_default_maps_differ_by_class(model):
    """The page's default (for the top classes, one chosen class and the two-way gallery) draws a different map for a
    different class: over 60 seeded CIFAR-10 test images, the maps of the first and the second most likely class, and
    of the true and the predicted class of the misclassified pack, correlate at most the benchmark rule's bound on
    average (bench/cam_faithfulness.py's `r 2nd` and `r last`, measured there on other images)."""
    import json

    from s10.cam import DEFAULT_LAYER, DEFAULT_METHOD
    from s10.data import load_dataset
    from s10.inference import load_misclassified

    bench = json.loads((ROOT / "bench" / "results" / "cam_faithfulness.json").read_text())
    bound = bench["rule"]["max_corr"]
    test = load_dataset(ROOT / ".data" / "cifar10").test
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:60]
    x = model.normalize(test.images[pick])
    with torch.inference_mode():
        first, second = model(x).topk(2).indices.T
    pairs = torch.stack([first, second], 1).flatten().tolist()
    maps = class_maps(model, x, DEFAULT_LAYER, pairs, DEFAULT_METHOD).reshape(len(x), 2, -1)
    assert (maps.max(-1) > 0).all(), "a default map is all zero"
    r = pearson(maps[:, 0], maps[:, 1])
    assert r.mean() <= bound, r.mean()

    images, pack = load_misclassified(RELEASED)
    classes = model.config.class_names
    pairs = [classes.index(e[key]) for e in pack[:20] for key in ("true", "pred")]
    maps = class_maps(model, model.normalize(images[:20]), DEFAULT_LAYER, pairs, DEFAULT_METHOD).reshape(20, 2, -1)
    assert pearson(maps[:, 0], maps[:, 1]).mean() <= bound


def test_the_page_offers_what_the_benchmark_chose():
    """The methods and the default in s10/cam.py are the ones bench/cam_faithfulness.py's rule picked from its
    committed measurements (rerun with --rule-only after a change of the rule)."""
    import json

    from s10 import cam

    bench = json.loads((ROOT / "bench" / "results" / "cam_faithfulness.json").read_text())
    assert list(cam.OFFERED) == bench["offered"]
    assert {"method": cam.DEFAULT_METHOD, "layer": cam.DEFAULT_LAYER} == bench["choice"]
    assert {r["method"] for r in bench["rows"]} == set(cam.MEASURED)


def test_the_words_beside_the_page_name_its_default_and_methods():
    """The Space's README (what a visitor reads beside the page) and docs/app.md name the method and layer the page
    opens with and every method it offers: a release that moves them (s10/cam.py, set as the benchmark says) fails
    here until the words follow."""
    from s10 import cam

    def names(text):  # the method names a text says, as whole words ("GradCAM" is not found in "XGradCAM")
        return {name for name in cam.MEASURED if re.search(rf"(?<![\w+]){re.escape(name)}(?![\w+])", text)}

    space = (ROOT / "space" / "README.md").read_text()
    method = re.search(r"\*\*Method\*\*: (.*?)\n  - ", space, re.S).group(1)
    layer = re.search(r"\*\*Layer\*\*: (.*?)\n  - ", space, re.S).group(1)
    assert f"{cam.DEFAULT_METHOD} (the default)" in method and set(cam.OFFERED) <= names(method)
    assert re.search(rf"`{re.escape(cam.DEFAULT_LAYER)}` \([^)]*the default\)", layer), layer
    docs = (ROOT / "docs" / "app.md").read_text()
    method = re.search(r"\*\*Method\*\*: (.*?)\n- ", docs, re.S).group(1)
    assert set(cam.OFFERED) <= names(method), method
    assert f"The default, {cam.DEFAULT_METHOD} at `{cam.DEFAULT_LAYER}`," in docs


def test_the_benchmark_stops_a_release_whose_page_would_not_follow_it():
    """bench/cam_faithfulness.py exits non-zero when s10/cam.py does not offer what its rule picked, naming the
    values to set (so `make release-record` stops before the screenshots of a new model), or when nothing
    qualifies; with the committed measurements it agrees."""
    import json

    sys.path.insert(0, str(ROOT / "bench"))
    import cam_faithfulness

    bench = json.loads((ROOT / "bench" / "results" / "cam_faithfulness.json").read_text())
    assert cam_faithfulness.app_disagrees(bench["offered"], bench["choice"]) is None
    said = cam_faithfulness.app_disagrees(["GradCAM"], {"method": "GradCAM", "layer": "layer2"})
    assert "OFFERED = ('GradCAM',)" in said and "DEFAULT_LAYER = 'layer2'" in said
    assert "no method and layer qualify" in cam_faithfulness.app_disagrees([], None)


@pytest.mark.parametrize("layer", S10Net().config.cam_layers)
@pytest.mark.parametrize("method", list(CAM_METHODS))
def test_maps_equal_torchcams_own_on_the_whole_graph(model, method, layer):
    """class_maps starts the graph at the layer (the layers before it run without autograd, once per image); for two
    images with two classes each, at every layer (inside a residual block too), the maps equal torchcam used as its
    docs show, on the whole graph with gradients flowing to the input."""
    x = torch.cat([example_input("deer", model), example_input("ship", model)])
    classes = [4, 7, 8, 0]  # deer: deer, horse; ship: ship, airplane
    ours, scores = class_maps(model, x, layer, classes, method, with_scores=True)
    xg = x.repeat_interleave(2, 0).clone().requires_grad_(True)
    with torch.enable_grad(), CAM_METHODS[method](model, target_layer=layer) as extractor:
        logits = model(xg)
        reference = extractor(classes, logits)[0]
    reference = torch.nn.functional.interpolate(reference[:, None], size=(32, 32), mode="bilinear")[:, 0]
    np.testing.assert_allclose(ours, reference.clamp(0, 1).nan_to_num(0).numpy(), atol=1e-4)
    torch.testing.assert_close(scores, logits.detach(), atol=1e-4, rtol=0)


def test_top_classes_are_ranked_by_the_same_pass(model):
    """class_maps(..., 3): each image's 3 most likely classes, most likely first, as a plain forward pass ranks them;
    the maps equal those asked for by class."""
    x = torch.cat([example_input(name, model) for name in ("cat", "truck")])
    cams, scores = class_maps(model, x, "layer2", 3, with_scores=True)
    with torch.inference_mode():
        top = model(x).topk(3).indices
    np.testing.assert_allclose(cams, class_maps(model, x, "layer2", top.flatten().tolist()), atol=1e-5)
    assert torch.equal(scores[::3].topk(3).indices, top)


def test_one_pass_per_image_class_pair_equals_single_calls(model):
    """The two-way gallery's batch (a different image per class) gives each image's own maps."""
    x = torch.cat([example_input(name, model) for name in ("cat", "dog")])
    both = class_maps(model, x, "layer2", [3, 5, 5, 3])  # cat: its class, then dog's; dog: its class, then cat's
    np.testing.assert_allclose(both[:2], class_maps(model, x[:1], "layer2", [3, 5]), atol=1e-5)
    np.testing.assert_allclose(both[2:], class_maps(model, x[1:], "layer2", [5, 3]), atol=1e-5)


def test_unknown_method_is_a_message(model):
    with pytest.raises(CamError, match="unknown CAM method 'SmoothCAM'; choose one of GradCAM"):
        class_maps(model, torch.zeros(1, 3, 32, 32), "prep", [0], "SmoothCAM")


def test_mistakes_are_explained_both_ways(released_app):
    app = released_app
    before = {k: v.clone() for k, v in app.CAM_MODEL.state_dict().items()}
    gallery = app.misclassified(4, True, app.LAYER, 0.5, "FinerCAM")
    assert len(gallery) == 8
    for n, entry in enumerate(app.PACK[:4]):
        (true_map, true_caption), (pred_map, pred_caption) = gallery[2 * n: 2 * n + 2]
        assert true_caption.startswith(f"true: {entry['true']} (") and pred_caption.startswith(
            f"predicted: {entry['pred']} ({entry['confidence']:.2f})")
        true_map, pred_map = Image.open(true_map), Image.open(pred_map)
        assert true_map.size == pred_map.size == (224, 224)
        assert not np.array_equal(np.asarray(true_map), np.asarray(pred_map))
    assert_clean(app.CAM_MODEL, before)
    plain = app.misclassified(4, False)
    assert [c for _, c in plain] == [f"true: {e['true']} / pred: {e['pred']} ({e['confidence']:.2f})"
                                     for e in app.PACK[:4]]


def test_low_confidence_hint_follows_the_threshold(released_app):
    """The hint shows exactly when the top probability is under the model's threshold: never for the examples, for
    pictures unlike CIFAR-10 (a flat grey square, two examples blended)."""
    app = released_app
    assert 0.3 < app.LOW_CONFIDENCE < 0.9
    odd = {"grey": Image.new("RGB", (64, 64), (128, 128, 128)),
           "blend": Image.blend(Image.open(EXAMPLES[3]).convert("RGB"), Image.open(EXAMPLES[8]).convert("RGB"), 0.5)}
    hinted = {}
    for name, picture in [*((p.name, str(p)) for p in EXAMPLES), *odd.items()]:
        label, _, _, note = app.explain(picture, 3, False)
        top = max(label.values())
        hinted[name] = "**The top probability" in note  # (the "none of the ten" warning is a note of its own)
        assert hinted[name] == (top < app.LOW_CONFIDENCE), (name, top)
    assert not any(hinted[p.name] for p in EXAMPLES)
    assert any(hinted[name] for name in odd)
    assert f"{app.LOW_CONFIDENCE:.2f}" in app.hint(app.LOW_CONFIDENCE / 2)


def test_network_view_is_the_32x32_input_enlarged(released_app):
    app = released_app
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8))
    _, _, seen, _ = app.explain(photo, 3, False)
    seen = Image.open(seen)
    small = np.asarray(seen)[::7, ::7]  # 224 = 32 x 7: every 7th pixel is one input pixel
    from s10.inference import square_resize

    assert seen.format == "PNG" and seen.size == (224, 224)  # lossless
    assert np.array_equal(small, np.asarray(square_resize(photo, 32)))


# -- the app module and its model resolution -------------------------------------------------------------------------


def import_app(tmp_path, env: dict) -> subprocess.CompletedProcess:
    """Import space/app.py in a fresh process (import builds the page, starts no server) and report its model."""
    code = ("import importlib.util, sys; sys.path.insert(0, %r); "
            "spec = importlib.util.spec_from_file_location('app', %r); app = importlib.util.module_from_spec(spec); "
            "spec.loader.exec_module(app); print('SOURCE', app.MODEL_SOURCE); print('CLASSES', len(app.CLASSES))"
            % (str(ROOT), str(ROOT / "space" / "app.py")))
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=180)


def test_model_from_a_local_folder(smoke_run, tmp_path):
    proc = import_app(tmp_path, {"S10_MODEL": str(smoke_run / "model")})
    assert proc.returncode == 0, proc.stderr
    assert f"SOURCE {smoke_run / 'model'}" in proc.stdout and "CLASSES 10" in proc.stdout


def test_model_from_a_prefilled_hub_cache_offline(smoke_run, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf" / "hub" / "models--someone--s10-cached"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(smoke_run / "model", snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    proc = import_app(tmp_path, {"S10_MODEL": "someone/s10-cached"})
    assert proc.returncode == 0, proc.stderr
    assert "SOURCE someone/s10-cached" in proc.stdout and "falling back" not in proc.stderr


def test_unknown_repo_falls_back_to_the_released_folder(smoke_run, tmp_path):
    released = ROOT / "release" / "model"
    if not (released / "model.safetensors").is_file():
        pytest.skip("no released model yet (the release run has not finished)")
    proc = import_app(tmp_path, {"S10_MODEL": "nobody/no-such-model"})
    assert proc.returncode == 0, proc.stderr
    assert "falling back" in proc.stderr and "nobody/no-such-model" in proc.stderr
    assert f"SOURCE {released}" in proc.stdout


def test_unreachable_hub_is_found_out_at_once_and_said(smoke_run, tmp_path):
    """Not declared offline, the Hub at an address that refuses connections: one probe decides, the app says so in its
    log and falls back (huggingface_hub alone would retry five times with backoff, about 25 s)."""
    from tests.conftest import free_port

    if not (RELEASED / "model.safetensors").is_file():
        pytest.skip("no released model yet (the release run has not finished)")
    proc = import_app(tmp_path, {"S10_MODEL": "someone/s10-remote", "HF_HUB_OFFLINE": "0",
                                 "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert proc.returncode == 0, proc.stderr
    assert "the Hub cannot be reached" in proc.stderr and "falling back" in proc.stderr
    assert "Retrying" not in proc.stderr and f"SOURCE {RELEASED}" in proc.stdout


def test_nothing_loadable_is_a_one_line_startup_error(tmp_path):
    # Point the released folder at an empty place by running a copy of the app from an empty tree.
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "s10", tree / "s10")
    (tree / "space").mkdir()
    shutil.copyfile(ROOT / "space" / "app.py", tree / "space" / "app.py")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "S10_MODEL": "nobody/nothing",
           "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(tree / "space" / "app.py")], capture_output=True, text=True,
                          env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("s10 app: no loadable model")


# -- the real server --------------------------------------------------------------------------------------------------


def bad_files(folder):
    folder.mkdir(exist_ok=True)
    files = {"empty.png": b"", "random.png": os.urandom(2048), "text.png": b"just some text\n",
             "truncated.jpg": encode(Image.new("RGB", (300, 300), FLAT), "JPEG")[:400],
             "1x1.png": encode(Image.new("RGB", (1, 1)), "PNG"), "strip.png": encode(Image.new("RGB", (3, 900)), "PNG"),
             "huge.png": png_header(20_000, 10_000)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


def test_server_predicts_every_example(server):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = server.client()
    for path in EXAMPLES:
        result = client.predict(handle_file(str(path)), 3, api_name="/predict")
        assert len(result["confidences"]) == 3 and result["label"] == result["confidences"][0]["label"]
    label, gallery, seen, note = client.predict(handle_file(str(EXAMPLES[0])), 5, True, 3, "layer2", 0.5,
                                                "GradCAM", "top classes", api_name="/explain")
    assert len(label["confidences"]) == 5 and len(gallery) == 3
    assert Image.open(gallery[0]["image"]).size == (224, 224) and Image.open(seen).size == (224, 224)
    assert gallery[0]["caption"].startswith(label["confidences"][0]["label"])
    # Another method, one chosen class: one map, for that class, unlike the top class's.
    label, chosen, _, _ = client.predict(handle_file(str(EXAMPLES[0])), 3, True, 3, "layer2", 0.5, "FinerCAM",
                                         "truck", api_name="/explain")
    assert len(chosen) == 1 and chosen[0]["caption"].startswith("truck (")
    # Gradio checks a dropdown's value against its choices before the app does: either way, a message naming it.
    with pytest.raises(AppError, match="NoCAM.*(not in the list of choices|choose one of)"):
        client.predict(handle_file(str(EXAMPLES[0])), 3, True, 3, "layer2", 0.5, "NoCAM", "top classes",
                       api_name="/explain")
    with pytest.raises(AppError, match="unicorn.*(not in the list of choices|choose)"):
        client.predict(handle_file(str(EXAMPLES[0])), 3, True, 3, "layer2", 0.5, "GradCAM", "unicorn",
                       api_name="/explain")
    mistakes = client.predict(4, True, "prep", 0.6, "XGradCAM", api_name="/misclassified")
    assert len(mistakes) == 8 and [m["caption"].split(":")[0] for m in mistakes] == ["true", "predicted"] * 4


def test_server_rejects_k_11_and_bad_uploads_then_still_answers(server, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = server.client()
    with pytest.raises(AppError, match="10"):
        client.predict(handle_file(str(EXAMPLES[0])), 11, api_name="/predict")
    mark = len(server.lines)  # gradio logs a traceback for its own slider check (k=11) only
    with pytest.raises(AppError, match="no image"):
        client.predict(None, 3, api_name="/predict")
    for path in bad_files(tmp_path / "bad"):
        with pytest.raises(AppError) as err:
            client.predict(handle_file(str(path)), 3, api_name="/predict")
        assert str(err.value).strip() and "Traceback" not in str(err.value), path.name
        assert len(client.predict(handle_file(str(EXAMPLES[1])), 2, api_name="/predict")["confidences"]) == 2
    assert "Traceback" not in "".join(server.lines[mark:])


@pytest.mark.parametrize("count", [None, "x", 2.5])
def test_the_api_says_what_is_wrong_with_a_count(server, count):
    """The API takes any JSON value where the page has a slider: a count that is no whole number is one clear
    message naming it, for the mistakes' gallery and for the CAMs, and the server still answers."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = server.client()
    with pytest.raises(AppError, match=r"the number of mistakes must be a whole number from 1 to \d+, got"):
        client.predict(count, False, "prep", 0.5, "GradCAM", api_name="/misclassified")
    with pytest.raises(AppError, match=r"the number of CAMs must be a whole number from \d+ to \d+, got"):
        client.predict(handle_file(str(EXAMPLES[0])), 3, True, count, "layer2", 0.5, "GradCAM", "top classes",
                       api_name="/explain")
    assert len(client.predict(3, False, "prep", 0.5, "GradCAM", api_name="/misclassified")) == 3


def gallery_pixels(gallery):
    return [(np.asarray(Image.open(g["image"])), g["caption"]) for g in gallery]


def test_concurrent_cams_overlap_and_match_sequential_ones(server):
    from gradio_client import handle_file

    layers, methods = ["prep", "layer1", "layer2", "layer3"], list(CAM_METHODS)
    jobs = [(str(EXAMPLES[i % len(EXAMPLES)]), layers[i % 4], methods[(i // 4) % len(methods)],
             "top classes" if i % 3 else CIFAR_NAMES[i % 10]) for i in range(16)]

    def explain(job, client):
        path, layer, method, target = job
        label, gallery, seen, _ = client.predict(handle_file(path), 3, True, 3, layer, 0.5, method, target,
                                                 api_name="/explain")
        return label, gallery_pixels(gallery) + [(np.asarray(Image.open(seen)), "seen")]

    client = server.client()
    sequential = [explain(job, client) for job in jobs]
    mark = len(server.lines)
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(lambda job: explain(job, server.client()), jobs))
    in_flight = [int(line.rsplit(":", 1)[1].strip(" )\n")) for line in server.lines[mark:] if "in flight" in line]
    assert len(in_flight) == 16 and max(in_flight) >= 2, in_flight
    for (label_a, cams_a), (label_b, cams_b) in zip(sequential, concurrent):
        assert label_a == label_b
        assert [c for _, c in cams_a] == [c for _, c in cams_b]
        for (a, _), (b, _) in zip(cams_a, cams_b):
            assert np.array_equal(a, b)


@pytest.mark.browser
def test_browser_example_method_target_and_network_view(server, tmp_path):
    """Click an example, switch the maps on, change the method and the target class: the maps and the 32x32 view
    are on the page. Screenshots go to $S10_SCREENSHOTS (or the test's temporary folder)."""
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("S10_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    def choose(elem_id, option):
        page.locator(f"#{elem_id} input").click()
        page.get_by_role("option", name=option, exact=True).click()

    def captions():
        return page.locator("#cam-gallery .caption-label").all_inner_texts()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=system_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1500})
        page.goto(server.url, wait_until="networkidle")
        page.locator("img[src*='cat.png']").first.click()  # an example: fills the image and runs a prediction
        view = page.locator("#network-view img")
        view.wait_for(timeout=90_000)
        label_text = page.get_by_test_id("label-output-value").inner_text(timeout=90_000)
        page.get_by_text("Show class activation maps").click()
        cams = page.locator("#cam-gallery img")
        cams.nth(2).wait_for(timeout=90_000)  # 3 maps by default
        page.screenshot(path=str(shots / "1-example-maps.png"), full_page=True)
        choose("cam-method", "FinerCAM")
        page.wait_for_load_state("networkidle")
        cams.nth(2).wait_for(timeout=90_000)
        choose("cam-target", "truck")
        page.wait_for_function("() => [...document.querySelectorAll('#cam-gallery .caption-label')]"
                               ".map(e => e.innerText).join('|').startsWith('truck (')", timeout=90_000)
        after = captions()
        n_view = view.count()
        view_size = view.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        one_map = cams.first.bounding_box()["width"] / page.locator("#cam-gallery").bounding_box()["width"]
        # The gallery sizes to its one row: no blank box below it (gradio's own minimum is 450 px).
        box, row = (page.locator(f"#cam-gallery {c}").first.bounding_box()["height"]
                    for c in (".grid-wrap", ".grid-container"))
        page.screenshot(path=str(shots / "2-finercam-truck.png"), full_page=True)
        browser.close()
    print(f"screenshots: {shots}")
    assert label_text.strip() in CIFAR_NAMES
    assert len(after) == 1 and after[0].startswith("truck (")
    assert n_view == 1 and view_size == [224, 224]
    assert one_map < 0.3, f"a single map spans {one_map:.0%} of the gallery's width"  # a tile, not stretched across
    assert box < row + 40, f"a gallery {box:.0f} px high holds a row {row:.0f} px high"
    assert (shots / "2-finercam-truck.png").stat().st_size > 10_000


def test_predict_command(smoke_run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"text")
    missing, folder = tmp_path / "missing.jpg", tmp_path
    proc = subprocess.run([sys.executable, "-m", "s10.predict", str(EXAMPLES[0]), str(bad), str(missing), str(folder),
                           "--top-k", "4", "--model", str(smoke_run / "model")], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    line = proc.stdout.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(str(EXAMPLES[0])) and line[0].count(",") == 3
    errors = proc.stderr.strip().splitlines()
    assert "not an image" in errors[0] and "Traceback" not in proc.stderr
    assert errors[1:] == [f"{missing}: error: no such file: {missing}",
                          f"{folder}: error: {folder} is a folder, not an image file"]


def test_the_space_readme_python_snippet_runs_against_the_server(server, tmp_path, capsys):
    """The "Use it from Python" snippet of space/README.md, as written, with this server for the Space and an example
    for cat.jpg."""
    import re

    text = (ROOT / "space" / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'Client("s10-project/s10-gradcam")' in code and '"cat.jpg"' in code
    here = f'Client("{server.url}", verbose=False, download_files={str(tmp_path)!r})'
    code = code.replace('Client("s10-project/s10-gradcam")', here).replace('"cat.jpg"', repr(str(EXAMPLES[3])))
    exec(compile(code, "space/README.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    names = __import__("json").loads((ROOT / "release" / "model" / "config.json").read_text())["class_names"]
    assert printed.split(" ", 1)[0] in names and printed.count("(") == 3, printed


def test_an_upload_over_the_size_limit_is_refused_with_a_message(server, tmp_path):
    from gradio_client import handle_file

    limit_mb = int(re.search(r'MAX_UPLOAD = "(\d+)mb"', (ROOT / "space" / "app.py").read_text()).group(1))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * ((limit_mb + 1) * 1024 * 1024))
    with pytest.raises(Exception) as err:
        server.client().predict(handle_file(str(big)), 3, api_name="/predict")
    assert re.search(r"exceed|too large|maximum|size", str(err.value), re.I), str(err.value)
