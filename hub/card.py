"""The model card: model/README.md in the Hub's format, every figure read from the run's results.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hub import settings as project
from s10.report import calibration_lines, pct, recipe_lines, results_table

PLOTS = ["curves.png", "confusion_matrix.png", "misclassified.png", "lr_finder.png", "reliability.png"]

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

The **S10** custom ResNet (6,573,130 parameters), trained from scratch on CIFAR-10: 32x32 RGB images in 10 classes
({{ classes }}). A ResNet-9-style network: a 64-channel stem, three stages (128, 256, 512 channels) with residual
blocks after the first and the last, max-pooling and a linear head. Test accuracy: **{{ headline }}**.

## Usage

```python
from s10.model import S10Net  # pip install git+{{ github_url }}
model = S10Net.from_pretrained("{{ repo_id }}")  # safetensors, eval mode, CPU
probs = model.probabilities(model.normalize(images))  # images: uint8 (B, 3, 32, 32); calibrated
```

`config.json` carries the class names, normalisation mean and std, input size, the layer names a CAM can use, the
temperature that calibrates the probabilities, and these results. Try it in the Space: {{ space_url }}.

## Training

{{ recipe }}

Training code, log and how to reproduce: {{ github_url }}.

## Results

{{ table }}

Measured on CIFAR-10's whole test split ({{ test_images }} images, never seen in training), in float32 as the weights
are published. Flip TTA is the mean of the logits of each image and its mirror image.

Per class: {{ per_class }}.

## Calibration

{{ calibration }}

![training curves](curves.png)

![confusion matrix](confusion_matrix.png)

The most confident mistakes (all 100 are in `misclassified.safetensors` + `misclassified.json`):

![misclassified test images](misclassified.png)

## Limitations

- Inputs are 32x32 pixels: larger pictures are centre-cropped and shrunk, so small or off-centre objects get lost.
- It only knows the 10 CIFAR-10 classes and will confidently pick one of them for anything else.
- Trained and measured on CIFAR-10's low-resolution photos, which differ from today's phone pictures.

## Links

- Training code: {{ github_url }}
- Demo Space: {{ space_url }}
"""


def eval_results(results: dict) -> list[EvalResult]:
    """One model-index result, CIFAR-10's test split, with two metrics: the plain accuracy and the flip-TTA one (the
    Hub groups EvalResults that share task, dataset and split into one result)."""
    common = dict(task_type="image-classification", task_name="Image Classification", dataset_type="cifar10",
                  dataset_name="CIFAR-10", dataset_split="test", metric_type="accuracy")
    return [EvalResult(metric_name="Test accuracy", metric_value=results["test_acc"], **common),
            EvalResult(metric_name="Test accuracy (flip TTA)", metric_value=results["test_acc_tta"], **common)]


def build_card(run: Path, repo_id: str | None = None, settings: project.Settings | None = None) -> ModelCard:
    run = Path(run)
    settings = settings or project.load()
    repo_id = repo_id or settings.model_repo
    config = json.loads((run / "config.json").read_text())
    results = json.loads((run / "results.json").read_text())
    name = repo_id.split("/")[-1]
    data = ModelCardData(
        license="mit", library_name="pytorch", pipeline_tag="image-classification", datasets=["cifar10"],
        metrics=["accuracy"], model_name=name, eval_results=eval_results(results),
        tags=["image-classification", "cifar10", "resnet", "gradcam", "pytorch_model_hub_mixin", "model_hub_mixin"],
    )
    headline = (f"{pct(results['test_acc'])} on the {results['test_images']:,} CIFAR-10 test images "
                f"({pct(results['test_acc_tta'])} with flip TTA)")
    return ModelCard.from_template(
        data, template_str=TEMPLATE, title=f"S10 ResNet for CIFAR-10 ({name})",
        classes=", ".join(config["data"]["classes"]), headline=headline, repo_id=repo_id,
        test_images=f"{results['test_images']:,}",
        github_url=settings.github_url, space_url=settings.space_url,
        recipe="\n".join(recipe_lines(config, results)), table="\n".join(results_table(results)),
        per_class=", ".join(f"{c} {pct(a)}" for c, a in results["per_class_acc"].items()),
        calibration="\n".join(calibration_lines(results, "reliability.png" if (run / "reliability.png").is_file()
                                                 else None)) or "Not measured for this model.",
    )


def write_model_card(run: Path, repo_id: str | None = None) -> Path:
    """Write run/model/README.md and copy the run's plots beside it (the card shows them)."""
    run = Path(run)
    model_dir = run / "model"
    for plot in PLOTS:
        if (run / plot).is_file():
            shutil.copyfile(run / plot, model_dir / plot)
    path = model_dir / "README.md"
    build_card(run, repo_id).save(path)
    return path


if __name__ == "__main__":  # python -m hub.card RUN_DIR: rewrite RUN_DIR/model/README.md from the run's record
    import sys

    print(write_model_card(Path(sys.argv[1])))
