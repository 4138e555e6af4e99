"""S10 CIFAR-10 classifier: top-k predictions, class activation maps and the model's mistakes (a Gradio app for a HF
Space).

    python space/app.py                        # from the repo: the released model (or S10_MODEL), port 7860
    S10_MODEL=user/repo python space/app.py    # a Hub model repo (downloaded once into the HF cache)
    S10_MODEL=runs/s10/model python app.py     # any local model folder

The model comes from S10_MODEL, else from the repo id the Space bundle wrote (project.json), else from the released
model folder (release/model), which is also the fallback when the Hub cannot be reached: one connection attempt of a
few seconds decides, then the HF cache is tried, so a Space without network starts in seconds. Importing this module
builds the page but starts no server; the port comes from GRADIO_SERVER_PORT as usual.
"""

from __future__ import annotations


def limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads that allocate at once malloc arenas of their own, up to 8 per core, and memory freed in one
    is seldom returned to the system; gradio answers requests on a pool of worker threads, so a long-running server's
    RSS crept up with the default and stays flat with two arenas (docs/app.md, the soak). Done before any thread
    starts; MALLOC_ARENA_MAX in the environment wins; a no-op without glibc."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt(-8, arenas)  # -8: M_ARENA_MAX
    except (OSError, AttributeError):
        pass


limit_malloc_arenas()

import copy  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE if (HERE / "s10").is_dir() else HERE.parent  # the Space bundle has s10/ beside app.py; the repo above
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import gradio.route_utils as gradio_route_utils  # noqa: E402
import torch  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from PIL import Image  # noqa: E402

from s10.cam import (  # noqa: E402
    CAM_METHODS,
    DEFAULT_LAYER,
    DEFAULT_METHOD,
    CamError,
    check_method,
    class_maps,
    freeze,
    overlay,
    shown,
)
from s10.inference import (  # noqa: E402
    MAX_TOP_K,
    ImageError,
    caption,
    check_top_k,
    load_image,
    load_misclassified,
    square_resize,
    to_input,
    top_k,
)
from s10.model import S10Net, calibrated  # noqa: E402
from s10.ood import Detector, features_and_logits  # noqa: E402

log = logging.getLogger("s10.app")
RELEASED = ROOT / "release" / "model"
EXAMPLES = sorted((HERE / "examples").glob("*.png"))
TOP_CLASSES = "top classes"  # the CAM target that means "the top n classes", beside the class names
CONCURRENCY = int(os.environ.get("S10_CONCURRENCY", "4"))  # requests of one kind run at once; more wait
QUEUE_SIZE = 64  # requests waiting at most; a visitor beyond it is told the queue is full
HUB_PROBE_TIMEOUT_S = 3.0
MAX_UPLOAD = "60mb"  # refused by the server before it is stored (a 108-megapixel phone JPEG is 20 to 40 MB)
# Client-side rendering, on purpose: SSR needs Node 24+ beside Python, and Spaces would otherwise follow
# GRADIO_SSR_MODE; the tests and the browser test run the page this way.
SSR_MODE = False
# A gallery sizes to what it holds: gradio gives its grid a minimum height of 450 px, so a row of three maps sat in
# a box twice its height.
CSS = "#cam-gallery .grid-wrap, #misclassified-gallery .grid-wrap {min-height: 0; height: auto}"


class StartupError(RuntimeError):
    pass


def project_settings() -> dict:
    path = ROOT / "project.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be reached (offline mode, or one failed TCP connection), or None if it can. One attempt with
    a short timeout, instead of huggingface_hub's five retries with backoff (about 25 s without a network)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return None
    except OSError as err:
        return f"{url.hostname}: {err}"


def resolve_model(requested: str | None = None, released: Path = RELEASED) -> tuple[S10Net, Path | None, str]:
    """Load the model once: (model, local folder with its misclassified pack if any, where it came from). The Space
    bundle pins the model repo's revision (project.json's model_revision, the commit it was bundled against), so a
    new model commit reaches a running Space only when the Space is bundled again; S10_MODEL takes a repo's main."""
    settings = project_settings()
    revision = None if (requested or os.environ.get("S10_MODEL")) else settings.get("model_revision")
    requested = requested or os.environ.get("S10_MODEL") or settings.get("model_repo")
    folder = Path(requested).expanduser() if requested else None
    if requested and requested.startswith(("/", ".", "~")) and not folder.is_dir():
        log.warning("model folder %s does not exist; falling back to %s", folder, released)
    elif requested and folder.is_dir():
        return S10Net.from_pretrained(folder), folder, str(folder)
    elif requested:
        offline = hub_unreachable()
        if offline:
            log.warning("the Hub cannot be reached (%s); trying the local HF cache for %s", offline, requested)
        try:
            model = S10Net.from_pretrained(requested, revision=revision, local_files_only=bool(offline))
            at = f"@{revision[:12]}" if revision else ""
            source = f"{requested}{at} (the HF cache's copy: {offline})" if offline else f"{requested}{at} (the Hub)"
            return model, _snapshot(requested, revision, local_only=bool(offline)), source
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


def _snapshot(repo_id: str, revision: str | None = None, local_only: bool = False) -> Path | None:
    """The local folder of a downloaded repo, for the misclassified pack (None if it is not there)."""
    from huggingface_hub import snapshot_download

    try:
        patterns = ["misclassified.*", "config.json", "ood.*"]
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns,
                                      local_files_only=local_only))
    except Exception:
        return None


try:
    MODEL, MODEL_FOLDER, MODEL_SOURCE = resolve_model()
except StartupError as err:
    sys.exit(f"s10 app: {err}")
freeze(MODEL)
# One intra-op thread per request: concurrent requests keep the cores busy (docs/app.md: Threads).
torch.set_num_threads(int(os.environ.get("S10_THREADS", "1")))
CAM_MODEL = copy.deepcopy(MODEL)  # CAM hooks must not see the predictions' forward passes (s10/cam.py)
MODEL.to(memory_format=torch.channels_last)  # oneDNN's faster layout for a single image on a CPU
CONFIG = MODEL.config
CLASSES = CONFIG.class_names
PACK_IMAGES, PACK, PACK_PROBLEM = torch.zeros(0, 3, 32, 32, dtype=torch.uint8), [], ""
try:
    if MODEL_FOLDER is None:
        raise FileNotFoundError(f"no local copy of {MODEL_SOURCE}")
    PACK_IMAGES, PACK = load_misclassified(MODEL_FOLDER)
except Exception as err:  # a model folder without the pack still classifies and explains; the page says why
    PACK_PROBLEM = f"the model's misclassified pack could not be loaded ({type(err).__name__}: {err})"
    log.warning("%s", PACK_PROBLEM)
# "None of the ten": the detector the model folder ships (bench/ood.py chose it); a model without one gets no warning,
# and a broken one is said on the page rather than taking the app down.
DETECTOR, DETECTOR_PROBLEM = None, ""
try:
    DETECTOR = Detector.load(CONFIG.ood, MODEL_FOLDER)
except Exception as err:
    DETECTOR_PROBLEM = f"the model's out-of-distribution detector could not be loaded ({type(err).__name__}: {err})"
    log.warning("%s", DETECTOR_PROBLEM)
LAYER = DEFAULT_LAYER if DEFAULT_LAYER in CONFIG.cam_layers else CONFIG.cam_layers[-1]
CAM_TARGETS = [TOP_CLASSES, *CLASSES]  # what a map can explain: the page's choices, and what the API accepts
# Below this top probability a picture looks unlike 95 % of the test images the model gets right (the training run
# measures it; a model without it gets no hint).
RESULTS = CONFIG.results or {}
LOW_CONFIDENCE = RESULTS.get("low_confidence_threshold")
LOW_CONFIDENCE_SPLIT = RESULTS.get("low_confidence", {})  # how often the model is right above and below it
_in_flight = 0
_in_flight_lock = threading.Lock()
# The pictures the app returns are written here, once each, under the hash of their bytes, and handed to gradio as
# paths inside its cache folder, which it serves as they are. Gradio's own way for a PIL image rewrites the cached
# file in place each time the same picture is returned, so a visitor downloading it at that moment got a truncated
# file. gradio's delete_cache (below) removes them on schedule, as it does uploads.
OUTPUTS = Path(get_upload_folder()) / "s10"
# Every `frequency` s, delete the uploads and pictures older than `age` s (both from S10_DELETE_CACHE, "600,3600").
DELETE_CACHE = tuple(int(v) for v in os.environ.get("S10_DELETE_CACHE", "600,3600").split(","))


# -- pure functions: what the page and the API call ------------------------------------------------------------------


def _picture(image) -> Image.Image:
    notes = []
    picture = load_image(image, notes=notes)
    for note in notes:
        gr.Warning(note)
    return picture


def served(picture: Image.Image, lossless: bool = False) -> str:
    """The path of `picture` encoded for the page, in gradio's cache: PNG where every pixel matters (the network's
    32x32 view, the test images), else JPEG at quality 90 without chroma subsampling (a heat map overlay: a fraction
    of the PNG's bytes and encoding time, and a test holds it to the PNG's look). Written once, atomically; an existing
    copy is only touched, so gradio's delete_cache, which goes by ctime, counts its age from its latest use."""
    buffer = io.BytesIO()
    if lossless:
        picture.save(buffer, "PNG")
    else:
        picture.save(buffer, "JPEG", quality=90, subsampling=0)
    data = buffer.getvalue()
    path = OUTPUTS / f"{hashlib.sha256(data).hexdigest()[:40]}.{'png' if lossless else 'jpg'}"
    try:
        os.utime(path)
    except FileNotFoundError:
        OUTPUTS.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=OUTPUTS, prefix=".staging-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
    return str(path)


def _check_cam(method: str, layer: str) -> None:
    if layer not in CONFIG.cam_layers:
        raise CamError(f"unknown layer {layer!r}; choose one of {', '.join(CONFIG.cam_layers)}")
    check_method(method)


def whole_number(value, name: str, low: int, high: int) -> int:
    """A count from the page or the API: a whole number, clipped to [low, high]; anything else (None, text, 2.5)
    is one clear error for the client, not int()'s TypeError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise gr.Error(f"{name} must be a whole number from {low} to {high}, got {value!r}", print_exception=False)
    return max(low, min(int(number), high))


def logits_of(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The logits of one normalised image, and whether the detector calls it none of the ten."""
    with torch.inference_mode():
        features, logits = features_and_logits(MODEL, x.contiguous(memory_format=torch.channels_last))
        return logits, DETECTOR is not None and bool(DETECTOR.fires(features, logits, CONFIG.temperature)[0])


def unlike_the_ten(fires: bool) -> str:
    """The page's warning for a picture the detector calls none of the ten, or "" ."""
    if not fires:
        return ""
    return (f"**This picture is unlike the pictures the model was trained on.** {DETECTOR.measures()} It may show "
            "none of the ten classes: treat the classes above with caution.")


def predict(image, k: int = 3) -> dict[str, float]:
    """Top-k class probabilities of an uploaded image, most likely first; a warning (a toast on the page) when the
    detector calls the picture none of the ten."""
    try:
        k = check_top_k(k)
        x = to_input(_picture(image), CONFIG.mean, CONFIG.std, CONFIG.input_size)
    except ImageError as err:
        raise gr.Error(str(err), print_exception=False) from None
    logits, fires = logits_of(x)
    if fires:
        gr.Warning("This picture is unlike the training pictures: it may show none of the ten classes.")
    return dict(top_k(calibrated(logits[0], CONFIG.temperature), CLASSES, k))


def hint(top_probability: float) -> str:
    """The page's note for a picture the model is unsure about, or "" ."""
    if LOW_CONFIDENCE is None or top_probability >= LOW_CONFIDENCE:
        return ""
    note = f"**The top probability, {top_probability:.2f}, is below {LOW_CONFIDENCE:.2f}**, the level that 95 % of " \
           "the test images the model classifies correctly reach"
    if None not in (LOW_CONFIDENCE_SPLIT.get("accuracy_below"), LOW_CONFIDENCE_SPLIT.get("accuracy_above")):
        note += (f". On the {RESULTS.get('test_images', 0):,} test images the model is right "
                 f"{100 * LOW_CONFIDENCE_SPLIT['accuracy_below']:.0f} % of the time below it "
                 f"({100 * LOW_CONFIDENCE_SPLIT['share_below']:.0f} % of them) and "
                 f"{100 * LOW_CONFIDENCE_SPLIT['accuracy_above']:.0f} % at or above it")
    return note + ": this picture may show none of the ten classes."


def explain(image, k: int = 3, show_cam: bool = True, n_cams: int = 3, layer: str = LAYER, opacity: float = 0.5,
            method: str = DEFAULT_METHOD, target: str = TOP_CLASSES):
    """Top-k probabilities; with show_cam, class activation maps (`method` at `layer`) for the top n_cams classes or
    for the one class named by `target`; the 32x32 picture the network classifies; the low-confidence hint."""
    global _in_flight
    try:
        k = check_top_k(k)
        _check_cam(method, layer)
        if target not in CAM_TARGETS:
            raise CamError(f"unknown target {target!r}; choose {TOP_CLASSES!r} or one of {', '.join(CLASSES)}")
        picture = _picture(image)
        x = to_input(picture, CONFIG.mean, CONFIG.std, CONFIG.input_size)
    except (ImageError, CamError) as err:
        raise gr.Error(str(err), print_exception=False) from None
    n_maps = whole_number(n_cams, "the number of CAMs", 0, k) if target == TOP_CLASSES else 1
    seen = served(shown(square_resize(picture, CONFIG.input_size)), lossless=True)
    if not show_cam or not n_maps:
        logits, fires = logits_of(x)
        probs = calibrated(logits[0], CONFIG.temperature)
        return dict(top_k(probs, CLASSES, k)), [], seen, notes(fires, float(probs.max()))
    with _in_flight_lock:
        _in_flight += 1
        log.info("cam request start (in flight: %d)", _in_flight)
    try:
        # One pass gives the probabilities and the maps: for the top classes, class_maps ranks them itself.
        # ... and the features the detector reads.
        cams, scores, features = class_maps(CAM_MODEL, x, layer,
                                            n_maps if target == TOP_CLASSES else [CLASSES.index(target)], method,
                                            with_features=True)
        probs = calibrated(scores[0], CONFIG.temperature)
        fires = DETECTOR is not None and bool(DETECTOR.fires(features[:1], scores[:1], CONFIG.temperature)[0])
        index = scores[0].topk(n_maps).indices.tolist() if target == TOP_CLASSES else [CLASSES.index(target)]
        base = shown(picture)
        gallery = [(served(overlay(base, cam, opacity)), f"{CLASSES[i]} ({probs[i]:.2f})")
                   for i, cam in zip(index, cams)]
    finally:
        with _in_flight_lock:
            _in_flight -= 1
    return dict(top_k(probs, CLASSES, k)), gallery, seen, notes(fires, float(probs.max()))


def notes(fires: bool, top_probability: float) -> str:
    """The page's notes on a prediction: "none of the ten" first, then the low-confidence hint."""
    return "\n\n".join(n for n in (unlike_the_ten(fires), hint(top_probability)) if n)


def misclassified(count: int = 10, with_cam: bool = False, layer: str = LAYER, opacity: float = 0.5,
                  method: str = DEFAULT_METHOD):
    """The model's most confident mistakes on the test set: image, true / predicted label, confidence. With CAMs,
    each mistake is explained both ways: the map for its true class, then the map for the predicted one."""
    if not PACK:
        raise gr.Error(PACK_PROBLEM or "this model folder has no misclassified pack", print_exception=False)
    try:
        _check_cam(method, layer)
    except CamError as err:
        raise gr.Error(str(err), print_exception=False) from None
    count = whole_number(count, "the number of mistakes", 1, len(PACK))
    entries, images = PACK[:count], PACK_IMAGES[:count]
    pictures = [shown(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in images]
    if not with_cam:
        return [(served(p, lossless=True), caption(e["true"], e["pred"], e["confidence"]))
                for p, e in zip(pictures, entries)]
    x = CAM_MODEL.normalize(images)  # the pack holds the 32x32 test images themselves: no resizing
    pairs = [(i, side, CLASSES.index(e[key])) for i, e in enumerate(entries)
             for side, key in (("true", "true"), ("predicted", "pred"))]
    # One pass for all: the maps for the true and the predicted class of each image, and the probabilities.
    cams, scores = class_maps(CAM_MODEL, x, layer, [c for _, _, c in pairs], method, with_scores=True)
    probs = calibrated(scores, CONFIG.temperature)
    return [(served(overlay(pictures[i], cam, opacity)), f"{side}: {CLASSES[c]} ({probs[j, c]:.2f})")
            for j, ((i, side, c), cam) in enumerate(zip(pairs, cams))]


def delete_old_files(blocks: gr.Blocks, age: int | None) -> None:
    """gradio's delete_cache step, walking a copy of each set of files. gradio 6.31's own
    (route_utils.delete_files_created_by_app) iterates the live sets while request handlers add to them, so under
    load it raises "Set changed size during iteration", its scheduled task ends, and nothing is deleted again. An
    emptied hash folder of an upload is removed too."""
    import time

    keep = set()
    for component in blocks.blocks.values():
        keep.update(getattr(component, "keep_in_cache", set()))
    now = time.time()
    for files in blocks.temp_file_sets:
        deleted = set()
        for file in list(files):
            if file in keep:
                continue
            path = Path(file)
            try:
                if age is None or now - path.lstat().st_ctime > age:
                    path.unlink()
                    deleted.add(file)
                    if path.parent != OUTPUTS and path.parent.parent == Path(get_upload_folder()):
                        path.parent.rmdir()  # fails (and is left) while it holds another file
            except OSError:  # already gone, or its folder not empty
                continue
        files -= deleted


gradio_route_utils.delete_files_created_by_app = delete_old_files


def message_on_failure(component, message):
    """Make a value that the component's own preprocess cannot take a message (`message(payload)`) instead of a
    server error. (Wrapping the instance, not subclassing: a gradio component subclass makes gradio write a .pyi
    stub.)"""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            raise gr.Error(message(payload), print_exception=False) from None

    component.preprocess = checked
    return component


def readable_upload(component: gr.Image) -> gr.Image:
    """An unreadable upload is a message: gr.Image opens the file with PIL before our function runs."""
    return message_on_failure(component, lambda payload: "not an image file that can be read (PNG, JPEG, WebP, GIF, "
                                                         "BMP or TIFF)")


def numeric(slider: gr.Slider, name: str, whole: bool = True) -> gr.Slider:
    """A value the API sends that is no number at all (None, text) is a message naming the control, instead of the
    generic error gradio's own check would raise."""
    kind = "a whole number" if whole else "a number"
    return message_on_failure(slider, lambda payload: f"{name} must be {kind} from {slider.minimum:g} to "
                                                      f"{slider.maximum:g}, got {payload!r}")


# -- the page --------------------------------------------------------------------------------------------------------

SETTINGS = project_settings()


def shown_source(source: str) -> str:
    """Where the model came from, for the page: a folder inside the app's tree by its relative path."""
    path = Path(source)
    return str(path.relative_to(ROOT)) if path.is_absolute() and path.is_relative_to(ROOT) else source


ACCURACY = (f"{100 * RESULTS['test_acc']:.2f} % on the {RESULTS['test_images']:,} CIFAR-10 test images "
            f"({100 * RESULTS['test_acc_tta']:.2f} % with flip TTA)") if "test_acc" in RESULTS else "not measured"
LINKS = " · ".join(f"[{name}]({url})" for name, url in (
    ("model repo", f"https://huggingface.co/{SETTINGS['model_repo']}" if SETTINGS.get("model_repo") else None),
    ("training code on GitHub", SETTINGS.get("github_url"))) if url)

with gr.Blocks(title="S10 CIFAR-10 classifier with class activation maps", delete_cache=DELETE_CACHE) as demo:
    gr.Markdown(
        f"# S10: a CIFAR-10 ResNet, explained\n"
        f"A 6.6 M-parameter ResNet trained on 32x32 CIFAR-10 images ({', '.join(CLASSES)}). "
        f"Test accuracy: {ACCURACY}. {LINKS}\n\n"
        "Upload a picture or click an example. The network sees only its centre square, shrunk to 32x32 (shown "
        "beside it). Class activation maps (torchcam) show where it looked for a class: its top classes, or any "
        "class you pick."
    )
    gr.Markdown(f"<small>Model: {shown_source(MODEL_SOURCE)}</small>", elem_id="model-source")
    if DETECTOR_PROBLEM:
        gr.Markdown(f"*No warning for pictures of other things: {DETECTOR_PROBLEM}.*", elem_id="detector-problem")
    with gr.Row():
        with gr.Column():
            # image_mode=None: the path of the upload as sent; load_image reads every mode (alpha goes on white)
            image = readable_upload(gr.Image(type="filepath", image_mode=None, label="Image", height=280))
            k = numeric(gr.Slider(1, MAX_TOP_K, value=3, step=1, label="Top-k classes"), "top-k")
            run = gr.Button("Classify", variant="primary")
        with gr.Column():
            seen = gr.Image(label="What the network sees (32x32, enlarged)", height=280, interactive=False,
                            format="png", elem_id="network-view")
        with gr.Column():
            label = gr.Label(num_top_classes=MAX_TOP_K, label="Prediction")
            note = gr.Markdown(elem_id="low-confidence-hint")
    with gr.Group():
        show_cam = gr.Checkbox(value=False, label="Show class activation maps")
        with gr.Row(visible=False) as cam_controls:
            method = gr.Dropdown(list(CAM_METHODS), value=DEFAULT_METHOD, label="Method", elem_id="cam-method")
            target = gr.Dropdown(CAM_TARGETS, value=TOP_CLASSES, label="Explain", elem_id="cam-target")
            n_cams = numeric(gr.Slider(1, MAX_TOP_K, value=3, step=1, label="Maps for the top classes (at most k)"),
                             "the number of CAMs")
            layer = gr.Dropdown(CONFIG.cam_layers, value=LAYER, label="Layer", elem_id="cam-layer")
            opacity = numeric(gr.Slider(0, 1, value=0.5, step=0.05, label="Map opacity"), "the opacity", whole=False)
        # fit_columns=False: one map (a chosen class) keeps a fifth of the width instead of stretching across it
        cam_gallery = gr.Gallery(label="Class activation maps", columns=5, fit_columns=False, height="auto",
                                 visible=False, format="png", elem_id="cam-gallery")
    with gr.Group():
        show_mis = gr.Checkbox(value=False, label="Show misclassified test images", interactive=bool(PACK))
        if PACK_PROBLEM:
            gr.Markdown(f"*Not available: {PACK_PROBLEM}.*", elem_id="misclassified-problem")
        with gr.Row(visible=False) as mis_controls:
            # (a slider needs two values; without a pack its checkbox is off and cannot be switched on)
            mis_count = numeric(gr.Slider(1, max(2, len(PACK)), value=min(10, max(1, len(PACK))), step=1,
                                          label="How many"), "the number of mistakes")
            mis_cam = gr.Checkbox(value=False, label="Explain both ways: maps for the true and the predicted class "
                                                     "(method, layer and opacity above)")
        mis_gallery = gr.Gallery(label="Misclassified", columns=6, fit_columns=False, height="auto", visible=False,
                                 format="png", elem_id="misclassified-gallery")
    gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Examples (CIFAR-10 test images, one per class)",
                examples_per_page=10)

    inputs = [image, k, show_cam, n_cams, layer, opacity, method, target]
    outputs = [label, cam_gallery, seen, note]

    def refresh(image, *controls):
        """Re-run on a changed control, quietly doing nothing while there is no image (e.g. after clearing it)."""
        return explain(image, *controls) if image else (None, [], None, "")

    run.click(explain, inputs, outputs, api_name="explain", concurrency_limit=CONCURRENCY)
    image.change(refresh, inputs, outputs, api_visibility="private", concurrency_limit=CONCURRENCY)
    for slider in (k, n_cams, opacity):
        slider.release(refresh, inputs, outputs, api_visibility="private", concurrency_limit=CONCURRENCY)
    for dropdown in (layer, method, target):
        dropdown.change(refresh, inputs, outputs, api_visibility="private", concurrency_limit=CONCURRENCY)
    def visible_pair(on):
        return [gr.update(visible=on)] * 2

    show_cam.change(visible_pair, show_cam, [cam_controls, cam_gallery], api_visibility="private") \
        .then(refresh, inputs, outputs, api_visibility="private", concurrency_limit=CONCURRENCY)
    gr.Button("Top-k only", visible=False).click(predict, [image, k], label, api_name="predict")

    mis_inputs = [mis_count, mis_cam, layer, opacity, method]

    def refresh_mistakes(on, *controls):
        return misclassified(*controls) if on else []

    show_mis.change(visible_pair, show_mis, [mis_controls, mis_gallery], api_visibility="private") \
        .then(refresh_mistakes, [show_mis, *mis_inputs], mis_gallery, api_visibility="private")
    for control in (mis_count.release, mis_cam.change, layer.change, opacity.release, method.change):
        control(refresh_mistakes, [show_mis, *mis_inputs], mis_gallery, api_visibility="private")
    gr.Button("Gallery", visible=False).click(misclassified, mis_inputs, mis_gallery, api_name="misclassified")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("model: %s", MODEL_SOURCE)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE).launch(max_file_size=MAX_UPLOAD,
                                                                               ssr_mode=SSR_MODE, css=CSS)
