"""S10 CIFAR-10 classifier: top-k predictions, GradCAM and the model's mistakes (a Gradio app for a HF Space).

    python space/app.py                        # from the repo: the released model (or S10_MODEL), port 7860
    S10_MODEL=user/repo python space/app.py    # a Hub model repo (downloaded once into the HF cache)
    S10_MODEL=runs/s10/model python app.py     # any local model folder

The model comes from S10_MODEL, else from the repo id the Space bundle wrote (project.json), else from the released
model folder (release/model), which is also the fallback when the Hub cannot be reached. Importing this module builds
the page but starts no server; the port comes from GRADIO_SERVER_PORT as usual.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE if (HERE / "s10").is_dir() else HERE.parent  # the Space bundle has s10/ beside app.py; the repo above
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from s10.cam import freeze, grad_cams, overlay  # noqa: E402
from s10.inference import (  # noqa: E402
    MAX_TOP_K,
    ImageError,
    check_top_k,
    load_image,
    load_misclassified,
    probabilities,
    to_input,
    top_k,
)
from s10.model import S10Net  # noqa: E402

log = logging.getLogger("s10.app")
RELEASED = ROOT / "release" / "model"
EXAMPLES = sorted((HERE / "examples").glob("*.png"))


class StartupError(RuntimeError):
    pass


def project_settings() -> dict:
    path = ROOT / "project.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def resolve_model(requested: str | None = None, released: Path = RELEASED) -> tuple[S10Net, Path | None, str]:
    """Load the model once: (model, local folder with its misclassified pack if any, where it came from)."""
    requested = requested or os.environ.get("S10_MODEL") or project_settings().get("model_repo")
    if requested and requested.startswith(("/", ".", "~")) and not Path(requested).expanduser().is_dir():
        log.warning("model folder %s does not exist; falling back to %s", requested, released)
    elif requested:
        try:
            model = S10Net.from_pretrained(requested)
            folder = Path(requested) if Path(requested).is_dir() else _snapshot(requested)
            return model, folder, requested
        except Exception as err:  # unreachable Hub, missing repo, bad weights: fall back, say so
            log.warning("could not load model %r (%s: %s); falling back to %s", requested, type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "", released)
    tried = f"{requested} failed and " if requested else ""
    if not (released / "model.safetensors").is_file():
        raise StartupError(f"no loadable model: {tried}there is no released model at {released}")
    try:
        return S10Net.from_pretrained(released), released, str(released)
    except Exception as err:
        raise StartupError(f"no loadable model: {tried}{released} does not load: {err}") from None


def _snapshot(repo_id: str) -> Path | None:
    """The local folder of a downloaded repo, for the misclassified pack (None if it is not there)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["misclassified.*", "config.json"]))
    except Exception:
        return None


try:
    MODEL, MODEL_FOLDER, MODEL_SOURCE = resolve_model()
except StartupError as err:
    sys.exit(f"s10 app: {err}")
freeze(MODEL)
CAM_MODEL = copy.deepcopy(MODEL)  # CAM hooks must not see the predictions' forward passes (s10/cam.py)
CONFIG = MODEL.config
CLASSES = CONFIG.class_names
try:
    PACK_IMAGES, PACK = load_misclassified(MODEL_FOLDER)
except Exception:  # a model folder without the pack still classifies and explains
    PACK_IMAGES, PACK = torch.zeros(0, 3, 32, 32, dtype=torch.uint8), []
DEFAULT_LAYER = "layer3" if "layer3" in CONFIG.cam_layers else CONFIG.cam_layers[-1]  # the last conv stage
_in_flight = 0
_in_flight_lock = threading.Lock()


# -- pure functions: what the page and the API call ------------------------------------------------------------------


def predict(image, k: int = 3) -> dict[str, float]:
    """Top-k class probabilities of an uploaded image, most likely first."""
    try:
        k = check_top_k(k)
        notes = []
        x = to_input(load_image(image, notes=notes), CONFIG.mean, CONFIG.std, CONFIG.input_size)
        for note in notes:
            gr.Warning(note)
    except ImageError as err:
        raise gr.Error(str(err), print_exception=False) from None
    return dict(top_k(probabilities(MODEL, x), CLASSES, k))


def explain(image, k: int = 3, show_cam: bool = True, n_cams: int = 3, layer: str = DEFAULT_LAYER,
            opacity: float = 0.5):
    """Top-k probabilities, and with show_cam a GradCAM overlay (at `layer`) for each of the top n_cams classes."""
    global _in_flight
    try:
        k = check_top_k(k)
        if layer not in CONFIG.cam_layers:
            raise ImageError(f"unknown layer {layer!r}; choose one of {', '.join(CONFIG.cam_layers)}")
        notes = []
        picture = load_image(image, notes=notes)
        for note in notes:
            gr.Warning(note)
        x = to_input(picture, CONFIG.mean, CONFIG.std, CONFIG.input_size)
    except ImageError as err:
        raise gr.Error(str(err), print_exception=False) from None
    probs = probabilities(MODEL, x)
    ranked = top_k(probs, CLASSES, k)
    if not show_cam:
        return dict(ranked), []
    n = max(0, min(int(n_cams), k))
    with _in_flight_lock:
        _in_flight += 1
        log.info("cam request start (in flight: %d)", _in_flight)
    try:
        index = probs.topk(n).indices.tolist()
        cams = grad_cams(CAM_MODEL, x, layer, index)
        shown = picture.resize((224, 224), box=_square(picture), resample=3)
        gallery = [(overlay(shown, cam, opacity), f"{CLASSES[i]} ({probs[i]:.2f})") for i, cam in zip(index, cams)]
    finally:
        with _in_flight_lock:
            _in_flight -= 1
    return dict(ranked), gallery


def _square(im) -> tuple[int, int, int, int]:
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return left, top, left + side, top + side


def misclassified(count: int = 10, with_cam: bool = False, layer: str = DEFAULT_LAYER, opacity: float = 0.5):
    """The model's most confident mistakes on the test set: image, true / predicted label, confidence."""
    from PIL import Image

    if not PACK:
        raise gr.Error("this model folder has no misclassified pack", print_exception=False)
    if layer not in CONFIG.cam_layers:
        raise gr.Error(f"unknown layer {layer!r}", print_exception=False)
    count = max(1, min(int(count), len(PACK)))
    gallery = []
    for img, entry in zip(PACK_IMAGES[:count], PACK[:count]):
        picture = Image.fromarray(img.permute(1, 2, 0).numpy())
        caption = f"true: {entry['true']} / pred: {entry['pred']} ({entry['confidence']:.2f})"
        if with_cam:
            x = to_input(picture, CONFIG.mean, CONFIG.std, CONFIG.input_size)
            cam = grad_cams(CAM_MODEL, x, layer, [CLASSES.index(entry["pred"])])[0]
            shown = overlay(picture, cam, opacity)
        else:
            shown = picture.resize((224, 224), Image.Resampling.NEAREST)
        gallery.append((shown, caption))
    return gallery


def readable_upload(component: gr.Image) -> gr.Image:
    """Make an unreadable upload a message instead of a server error: gr.Image opens the file with PIL before our
    function runs. (Wrapping the instance, not subclassing: a gr.Image subclass makes gradio write a .pyi stub.)"""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            raise gr.Error("not an image file that can be read (PNG, JPEG, WebP, GIF, BMP or TIFF)",
                           print_exception=False) from None

    component.preprocess = checked
    return component


# -- the page --------------------------------------------------------------------------------------------------------

SETTINGS = project_settings()
RESULTS = CONFIG.results or {}
ACCURACY = (f"{100 * RESULTS['test_acc']:.2f} % on the {RESULTS['test_images']:,} CIFAR-10 test images"
            + (f" ({100 * RESULTS['exact_test_acc']:.2f} % on the {RESULTS['exact_images']:,} lossless originals)"
               if "exact_test_acc" in RESULTS else "")) if "test_acc" in RESULTS else "not measured"
LINKS = " · ".join(f"[{name}]({url})" for name, url in (
    ("model repo", f"https://huggingface.co/{SETTINGS['model_repo']}" if SETTINGS.get("model_repo") else None),
    ("training code on GitHub", SETTINGS.get("github_url"))) if url)

with gr.Blocks(title="S10 CIFAR-10 classifier with GradCAM") as demo:
    gr.Markdown(
        f"# S10: a CIFAR-10 ResNet, explained\n"
        f"A 6.6 M-parameter ResNet trained on 32x32 CIFAR-10 images ({', '.join(CLASSES)}). "
        f"Test accuracy: {ACCURACY}. {LINKS}\n\n"
        "Upload a picture (it is centre-cropped and shrunk to 32x32) or click an example; GradCAM shows where the "
        "network looked for each of its top classes."
    )
    with gr.Row():
        with gr.Column():
            image = readable_upload(gr.Image(type="filepath", label="Image", height=280))
            k = gr.Slider(1, MAX_TOP_K, value=3, step=1, label="Top-k classes")
            run = gr.Button("Classify", variant="primary")
        with gr.Column():
            label = gr.Label(num_top_classes=MAX_TOP_K, label="Prediction")
    with gr.Group():
        show_cam = gr.Checkbox(value=False, label="Show GradCAM")
        with gr.Row(visible=False) as cam_controls:
            n_cams = gr.Slider(1, MAX_TOP_K, value=3, step=1, label="CAM images (one per top class, at most k)")
            layer = gr.Dropdown(CONFIG.cam_layers, value=DEFAULT_LAYER, label="Layer")
            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="CAM opacity")
        cam_gallery = gr.Gallery(label="GradCAM", columns=5, height="auto", visible=False, format="png",
                                 elem_id="cam-gallery")
    with gr.Group():
        show_mis = gr.Checkbox(value=False, label="Show misclassified test images")
        with gr.Row(visible=False) as mis_controls:
            mis_count = gr.Slider(1, max(1, len(PACK)), value=min(10, max(1, len(PACK))), step=1,
                                  label="How many")
            mis_cam = gr.Checkbox(value=False, label="Overlay GradCAM (layer and opacity above)")
        mis_gallery = gr.Gallery(label="Misclassified", columns=5, height="auto", visible=False, format="png",
                                 elem_id="misclassified-gallery")
    gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Examples (CIFAR-10 test images, one per class)",
                examples_per_page=10)

    inputs = [image, k, show_cam, n_cams, layer, opacity]

    def refresh(image, *controls):
        """Re-run on a changed control, quietly doing nothing while there is no image (e.g. after clearing it)."""
        return explain(image, *controls) if image else (None, [])

    run.click(explain, inputs, [label, cam_gallery], api_name="explain", concurrency_limit=4)
    image.change(refresh, inputs, [label, cam_gallery], api_name=False, concurrency_limit=4)
    for slider in (k, n_cams, opacity):
        slider.release(refresh, inputs, [label, cam_gallery], api_name=False, concurrency_limit=4)
    layer.change(refresh, inputs, [label, cam_gallery], api_name=False, concurrency_limit=4)
    show_cam.change(lambda on: [gr.update(visible=on)] * 2, show_cam, [cam_controls, cam_gallery], api_name=False) \
        .then(refresh, inputs, [label, cam_gallery], api_name=False, concurrency_limit=4)
    gr.Button("Top-k only", visible=False).click(predict, [image, k], label, api_name="predict")

    mis_inputs = [mis_count, mis_cam, layer, opacity]

    def refresh_mistakes(on, *controls):
        return misclassified(*controls) if on else []

    show_mis.change(lambda on: [gr.update(visible=on)] * 2, show_mis, [mis_controls, mis_gallery], api_name=False) \
        .then(refresh_mistakes, [show_mis, *mis_inputs], mis_gallery, api_name=False)
    for control in (mis_count.release, mis_cam.change, layer.change, opacity.release):
        control(refresh_mistakes, [show_mis, *mis_inputs], mis_gallery, api_name=False)
    gr.Button("Gallery", visible=False).click(misclassified, mis_inputs, mis_gallery, api_name="misclassified")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("model: %s", MODEL_SOURCE)
    demo.queue(default_concurrency_limit=4).launch()
