"""The transport's own cost: a Gradio app with the S10 app's API (the same inputs and outputs) that computes nothing.

    python bench/noop_app.py        # port from GRADIO_SERVER_PORT, as the app

Each endpoint returns pictures made once at start (real overlays of the released model, 224x224) as PIL images with
`format="png"`, the way the app returned them before it wrote its own files: gradio encodes them as PNG on every
request. `bench/app_load.py` serves it beside the app and reports the app's throughput as a ratio of this one's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402

from s10.cam import CAM_METHODS, class_maps, freeze, overlay, shown  # noqa: E402
from s10.inference import MAX_TOP_K, load_image, to_input  # noqa: E402
from s10.model import S10Net  # noqa: E402

MODEL = freeze(S10Net.from_pretrained(os.environ.get("S10_MODEL", ROOT / "release" / "model")))
CLASSES = MODEL.config.class_names
PICTURE = load_image(ROOT / "space" / "examples" / "cat.png")
X = to_input(PICTURE, MODEL.config.mean, MODEL.config.std)
OVERLAYS = [overlay(shown(PICTURE), cam, 0.5) for cam in class_maps(MODEL, X.repeat(10, 1, 1, 1), "layer3",
                                                                     list(range(10)))]
SEEN = shown(PICTURE.resize((32, 32)))
LABEL = {name: 1 / len(CLASSES) for name in CLASSES}


def predict(image, k=3):
    return dict(list(LABEL.items())[:int(k)])


def explain(image, k=3, show_cam=True, n_cams=3, layer="layer3", opacity=0.5, method="GradCAM",
            target="top classes"):
    gallery = [(im, f"{CLASSES[i]} (0.10)") for i, im in enumerate(OVERLAYS[:int(n_cams)])] if show_cam else []
    return predict(image, k), gallery, SEEN, ""


def misclassified(count=10, with_cam=False, layer="layer3", opacity=0.5, method="GradCAM"):
    pictures = [OVERLAYS[i % 10] for i in range(int(count))]
    if with_cam:
        return [(p, f"{side}: cat (0.10)") for p in pictures for side in ("true", "predicted")]
    return [(SEEN, "true: cat / pred: dog (0.90)") for _ in pictures]


with gr.Blocks() as demo:
    image = gr.Image(type="filepath")
    k = gr.Slider(1, MAX_TOP_K, value=3, step=1)
    show_cam = gr.Checkbox(value=False)
    n_cams = gr.Slider(1, MAX_TOP_K, value=3, step=1)
    layer = gr.Dropdown(MODEL.config.cam_layers, value="layer3")
    opacity = gr.Slider(0, 1, value=0.5, step=0.05)
    method = gr.Dropdown(list(CAM_METHODS), value="GradCAM")
    target = gr.Dropdown(["top classes", *CLASSES], value="top classes")
    label = gr.Label(num_top_classes=MAX_TOP_K)
    cam_gallery = gr.Gallery(format="png")
    seen = gr.Image(format="png")
    note = gr.Markdown()
    mis_count = gr.Slider(1, 100, value=10, step=1)
    mis_cam = gr.Checkbox(value=False)
    mis_gallery = gr.Gallery(format="png")
    gr.Button().click(explain, [image, k, show_cam, n_cams, layer, opacity, method, target],
                      [label, cam_gallery, seen, note], api_name="explain", concurrency_limit=4)
    gr.Button().click(predict, [image, k], label, api_name="predict", concurrency_limit=4)
    gr.Button().click(misclassified, [mis_count, mis_cam, layer, opacity, method], mis_gallery,
                      api_name="misclassified", concurrency_limit=4)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=4, max_size=64).launch()
