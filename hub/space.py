"""Bundle the Gradio app into a Hugging Face Space repo and upload it.

    python -m hub.space [--space-id USER/NAME] [--model-id USER/NAME]            # upload (needs a token)
    python -m hub.space --dry-run OUT_DIR                                          # write the bundle only

The bundle holds space/ (app, README, examples), only the inference modules the app imports (the network,
preprocessing, CAM helpers), the released model as the offline fallback, project.json naming the model repo the app
downloads, and a requirements.txt without lightning that installs the CPU build of torch.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

from huggingface_hub import SpaceCard

from hub import settings as project
from hub.push import PushError, upload

ROOT = project.ROOT
INFERENCE_MODULES = ["s10/__init__.py", "s10/model.py", "s10/inference.py", "s10/cam.py", "s10/ood.py"]
RELEASED = ROOT / "release" / "model"
RELEASED_FILES = ["model.safetensors", "config.json", "misclassified.safetensors", "misclassified.json"]
RELEASED_OPTIONAL = ["ood.safetensors"]  # the detector's statistics, where its score has any (s10/ood.py)
# What the app needs at run time, pinned as in requirements.txt; gradio comes from sdk_version.
SPACE_PACKAGES = ["torch", "huggingface_hub", "safetensors", "torchcam", "matplotlib", "pillow", "numpy"]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pins(path: Path = ROOT / "requirements.txt") -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)\s*==\s*([^\s#;]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def requirements() -> str:
    pinned = pins()
    lines = [f"--extra-index-url {CPU_INDEX}  # the CPU build of torch: a free CPU Space needs no CUDA"]
    for name in SPACE_PACKAGES:
        version = pinned.get(name.lower())
        if name == "torch":
            lines.append(f"torch=={version}+cpu")
        else:
            lines.append(f"{name}=={version}" if version else name)
    return "\n".join(lines) + "\n"


def model_commit(model_id: str) -> str:
    """The model repo's current commit, which the bundled Space then loads (online; one line if it fails)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(model_id).sha
    except Exception as err:  # offline, 404, 401: one line
        raise PushError(f"cannot read the commit of {model_id} ({type(err).__name__}); pass --model-revision") from None


def bundle(out: Path, space_id: str, model_id: str, settings: project.Settings, revision: str = "main") -> list[str]:
    if not (RELEASED / "model.safetensors").is_file():
        raise PushError(f"{RELEASED} has no released model to ship as the fallback")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "space" / "app.py", out / "app.py")
    shutil.copytree(ROOT / "space" / "examples", out / "examples", dirs_exist_ok=True)
    shutil.copytree(ROOT / "docs" / "images", out / "images", dirs_exist_ok=True)  # `make screenshots`
    for rel in INFERENCE_MODULES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / rel, out / rel)
    (out / "release" / "model").mkdir(parents=True, exist_ok=True)
    for name in RELEASED_FILES + [n for n in RELEASED_OPTIONAL if (RELEASED / n).is_file()]:
        shutil.copyfile(RELEASED / name, out / "release" / "model" / name)
    (out / "requirements.txt").write_text(requirements())
    resolved = {"hf_user": settings.hf_user, "model_repo": model_id, "model_revision": revision,
                "space_repo": space_id, "github_url": settings.github_url}
    import json

    (out / "project.json").write_text(json.dumps(resolved, indent=2) + "\n")
    card = SpaceCard.load(ROOT / "space" / "README.md")
    card.data.sdk = "gradio"
    card.data.sdk_version = pins()["gradio"]
    card.data.python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    card.data.app_file = "app.py"
    card.data.models = [model_id]
    card.data.license = "mit"
    card.text = card.text.replace("the GitHub repository linked on the app's page", settings.github_url) \
        .replace("see `models:` above", f"https://huggingface.co/{model_id}") \
        .replace('Client("s10-project/s10-gradcam")', f'Client("{space_id}")')
    card.save(out / "README.md")
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def main(argv=None) -> int:
    settings = project.load()
    parser = argparse.ArgumentParser(prog="python -m hub.space", description=__doc__.splitlines()[0])
    parser.add_argument("--space-id", default=settings.space_repo, help="USER/NAME of the Space")
    parser.add_argument("--model-id", default=settings.model_repo, help="the model repo the app downloads")
    parser.add_argument("--model-revision", help="the model repo commit the Space loads (default: its current "
                        "commit, read from the Hub; a dry run without it pins 'main')")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", type=Path, metavar="OUT_DIR", help="write the bundle instead of uploading")
    args = parser.parse_args(argv)
    try:
        if args.dry_run:
            files = bundle(args.dry_run, args.space_id, args.model_id, settings, args.model_revision or "main")
            print(f"dry run: {len(files)} files for Space {args.space_id} in {args.dry_run}")
        else:
            revision = args.model_revision or model_commit(args.model_id)
            with tempfile.TemporaryDirectory() as tmp:
                bundle(Path(tmp) / "space", args.space_id, args.model_id, settings, revision)
                print(upload(Path(tmp) / "space", args.space_id, args.private, repo_type="space",
                             message=f"Deploy the S10 app ({args.model_id})"))
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
