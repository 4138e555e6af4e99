"""The model card: model/README.md in the Hub's format, every figure read from the run's results.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hub import settings as project
from s10.report import calibration_lines, pct, recipe_lines, results_table, seeds_summary
from s10.seeds import seed_list, spread_text

PLOTS = ["curves.png", "confusion_matrix.png", "misclassified.png", "lr_finder.png", "reliability.png"]

TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

The **S10** custom ResNet (6,573,130 parameters), trained from scratch on CIFAR-10: 32x32 RGB images in 10 classes
({{ classes }}). A ResNet-9-style network: a 64-channel stem, three stages (128, 256, 512 channels) with residual
blocks after the first and the last, max-pooling and a linear head. Test accuracy: **{{ headline }}**.

## Usage

```bash
pip install "s10 @ git+{{ github_url }}"  # torch, huggingface_hub, safetensors, pillow, numpy: no training stack
```

```python
from s10.inference import classify
from s10.model import S10Net

model = S10Net.from_pretrained("{{ repo_id }}")  # safetensors, eval mode, CPU
print(classify(model, "cat.jpg", k=3))  # the 3 most likely classes, with calibrated probabilities
```

`classify` takes any picture file (or PIL image) and prepares it as the network was trained: upright, on white where
transparent, centre-cropped to a square, shrunk to 32x32, normalised with the config's mean and std.
`config.json` carries the class names, normalisation mean and std, input size, the layer names a CAM can use, the
temperature that calibrates the probabilities, and these results. `classify` ranks the ten classes only; from the
command line, `python -m s10.predict photo.jpg --model {{ repo_id }}` also runs the out-of-distribution detector
below and marks a picture unlike the training pictures with "(unlike the training pictures?)". From the GitHub repository,
`torch.hub.load("{{ github_repo }}", "s10_cifar10")` returns the same model. Try it in the Space: {{ space_url }}.

## Training

{{ recipe }}

Training code, log and how to reproduce: {{ github_url }}.

## Results

{{ table }}

Measured on CIFAR-10's whole test split ({{ test_images }} images, never seen in training), in float32 as the weights
are published. Flip TTA is the mean of the logits of each image and its mirror image.{{ spread }}

Per class: {{ per_class }}.

## Calibration

{{ calibration }}

## Pictures unlike the training images

{{ ood }}

![training curves](curves.png)

![confusion matrix](confusion_matrix.png)

The most confident mistakes (all 100 are in `misclassified.safetensors` + `misclassified.json`):

![misclassified test images](misclassified.png)

## Limitations

- Inputs are 32x32 pixels: larger pictures are centre-cropped and shrunk, so small or off-centre objects get lost.
- It only knows the 10 CIFAR-10 classes. Its out-of-distribution detector (above) flags much of what is none of
  them, not all: a picture whose features happen to lie near a class still gets that class, confidently.
- Trained and measured on CIFAR-10's low-resolution photos, which differ from today's phone pictures.

## References

- Network and recipe: D. Page, [How to train your ResNet](https://myrtle.ai/learn/how-to-train-your-resnet/) (2018);
  Cutout: T. DeVries and G. W. Taylor, [arXiv:1708.04552](https://arxiv.org/abs/1708.04552){{ recipe_references }}.
- Calibration: C. Guo et al., On Calibration of Modern Neural Networks,
  [arXiv:1706.04599](https://arxiv.org/abs/1706.04599).
- Class activation maps in the Space: Grad-CAM, R. R. Selvaraju et al.,
  [arXiv:1610.02391](https://arxiv.org/abs/1610.02391); Grad-CAM++, A. Chattopadhyay et al.,
  [arXiv:1710.11063](https://arxiv.org/abs/1710.11063); XGrad-CAM, R. Fu et al.,
  [arXiv:2008.02312](https://arxiv.org/abs/2008.02312); computed with
  [torchcam](https://github.com/frgfm/torch-cam).

## Citation

```bibtex
{{ citation }}
```

## Links

- Training code: {{ github_url }}
- Demo Space: {{ space_url }}
"""

DATASET_ID, DATASET_CONFIG = "uoft-cs/cifar10", "plain_text"  # the Hub's CIFAR-10 (formerly "cifar10")


def citation(settings: project.Settings) -> str:
    """BibTeX for the project (its GitHub URL from project.json)."""
    return "\n".join(["@software{s10_cifar10_resnet,",
                      "  title   = {{S10}: a {CIFAR-10} {ResNet} from training to a public demo},",
                      "  author  = {{s10 contributors}},", f"  url     = {{{settings.github_url}}},",
                      "  license = {MIT},", "  year    = {2026}", "}"])


OOD_NAMES = {"msp": "the top calibrated probability", "energy": "the energy score (Liu et al. 2020)",
             "mahalanobis": "the Mahalanobis distance of the penultimate features to the nearest class mean, with a "
                            "covariance shared by the classes (Lee et al. 2018)",
             "knn": "the cosine distance of the penultimate features to those of the k-th nearest of {bank:,} "
                    "training images (k = {k}; Sun et al. 2022)"}


def ood_lines(entry: dict, folder: Path) -> list[str]:
    """The card's account of the out-of-distribution detector in config.json's `ood` (bench/ood.py wrote it), with
    its statistics file in `folder`."""
    if not entry:
        return ["This model folder ships no out-of-distribution detector."]
    from s10.ood import Detector

    stats = Detector.load(entry, folder).stats
    sizes = {"bank": len(stats["bank"]), "k": int(stats["k"])} if "bank" in stats else {}
    held = entry.get("held_out")
    auroc, fpr = entry.get("auroc", {}), entry.get("fpr95", {})
    shipped = f" (its statistics: `{entry['file']}`)" if entry.get("file") else ""
    name = OOD_NAMES.get(entry["score"], entry["score"]).format(**sizes)
    lines = [f"`config.json`'s `ood` names a detector: {name}{shipped}. Above "
             f"its threshold, {entry['threshold']:.4g}, which {100 * entry.get('keeps', 0.95):.0f} % of the CIFAR-10 "
             "test images stay under, a picture is called unlike the training pictures: it may show none of the ten "
             "classes, and the Space says so and asks for caution with the classes it lists. Measured "
             "by `bench/ood.py` on generated pictures that are none of the ten (AUROC against the CIFAR-10 test "
             "images / the share let through):", "", "| kind | AUROC | let through |", "|---|---:|---:|"]
    lines += [f"| {k}{' (held out: no choice was made on it)' if k == held else ''} | {auroc[k]:.3f} | "
              f"{100 * fpr[k]:.0f} % |" for k in auroc]
    lines += ["", "What it will still miss: pictures near a class (an animal or a vehicle that CIFAR-10 lacks, a "
              "drawing of a cat), and some photographs, as the held-out row shows; what it flags among real photos "
              "of the ten classes is at least the 5 % its threshold gives up on the test set."]
    return lines


def eval_results(results: dict) -> list[EvalResult]:
    """One model-index result, CIFAR-10's test split, with two metrics: the plain accuracy and the flip-TTA one (the
    Hub groups EvalResults that share task, dataset and split into one result)."""
    common = dict(task_type="image-classification", task_name="Image Classification", dataset_type=DATASET_ID,
                  dataset_name="CIFAR-10", dataset_config=DATASET_CONFIG, dataset_split="test",
                  metric_type="accuracy")
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
        # library_name and the mixin tags as PyTorchModelHubMixin writes them for S10Net (s10/model.py)
        license="mit", library_name="s10", pipeline_tag="image-classification", datasets=[DATASET_ID],
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
        github_repo="/".join(settings.github_url.rstrip("/").split("/")[-2:]), citation=citation(settings),
        recipe="\n".join(recipe_lines(config, results)), table="\n".join(results_table(results)),
        spread=spread_sentence(run, config["recipe"]["seed"]),
        recipe_references=recipe_references(config["recipe"], bool(config["args"].get("find_lr"))),
        per_class=", ".join(f"{c} {pct(a)}" for c, a in results["per_class_acc"].items()),
        ood="\n".join(ood_lines(json.loads((run / "model" / "config.json").read_text()).get("ood") or {},
                                 run / "model")),
        calibration="\n".join(calibration_lines(results, "reliability.png" if (run / "reliability.png").is_file()
                                                 else None)) or "Not measured for this model.",
    )


def spread_sentence(run: Path, seed: int) -> str:
    """What one seed's figures are worth: the recipe's mean +- sd over the seeds the release records, if it has
    more than one (`make seeds-record`)."""
    spread = seeds_summary(run)
    if not spread or spread["runs"] < 2:
        return ""
    return (f" These weights are seed {seed} of their recipe; over its {spread['runs']} seeds "
            f"({seed_list(spread)}), the recipe scores "
            f"**{spread_text(spread['test_acc'])}** ({spread_text(spread['test_acc_tta'])} with flip TTA), "
            "mean +- sd in percentage points.")


def recipe_references(recipe: dict, find_lr: bool) -> str:
    """The sources of the recipe options this run used, and only those (Page's network and his recipe, and Cutout,
    every run uses)."""
    refs = []
    if recipe.get("schedule", "one_cycle") == "one_cycle":  # a record from before the option ran One Cycle
        refs.append("One Cycle and super-convergence: L. N. Smith and N. Topin, "
                    "[arXiv:1708.07120](https://arxiv.org/abs/1708.07120)")
    if find_lr:
        refs.append("the LR range test: L. N. Smith, [arXiv:1506.01186](https://arxiv.org/abs/1506.01186)")
    if recipe.get("label_smoothing"):
        refs.append("label smoothing: C. Szegedy et al., [arXiv:1512.00567](https://arxiv.org/abs/1512.00567)")
    if recipe.get("ghost_batch"):
        refs.append("ghost batch norm: E. Hoffer et al., [arXiv:1705.08741](https://arxiv.org/abs/1705.08741)")
    if recipe.get("ema_decay"):
        refs.append("the moving average of the weights: D. Page, [bag of tricks]"
                    "(https://myrtle.ai/learn/how-to-train-your-resnet-8-bag-of-tricks/)")
    if recipe.get("alternating_flip"):
        refs.append("alternating flip: K. Jordan, [arXiv:2404.00498](https://arxiv.org/abs/2404.00498)")
    if recipe.get("optimizer") == "adamw":
        refs.append("decoupled weight decay: I. Loshchilov and F. Hutter, "
                    "[arXiv:1711.05101](https://arxiv.org/abs/1711.05101)")
    return "".join(f";\n  {ref}" for ref in refs)


def write_model_card(run: Path, repo_id: str | None = None) -> Path:
    """Write run/model/README.md and copy the run's plots beside it (the card shows them). It names the project as
    project.json does (settings.load(committed=True)): the file is committed, so a clean clone renders it equal
    whatever its remote; the card `make publish` uploads is rendered afresh with the overrides (hub/push.py)."""
    run = Path(run)
    model_dir = run / "model"
    for plot in PLOTS:
        if (run / plot).is_file():
            shutil.copyfile(run / plot, model_dir / plot)
    path = model_dir / "README.md"
    build_card(run, repo_id, project.load(committed=True)).save(path)
    return path


if __name__ == "__main__":  # python -m hub.card RUN_DIR: rewrite RUN_DIR/model/README.md from the run's record
    import sys

    print(write_model_card(Path(sys.argv[1])))
