"""Push a run's model to a Hugging Face Hub model repo, in one commit.

    python -m hub.push RUN_DIR [--repo-id USER/NAME] [--private]     # needs a token: HF_TOKEN or `hf auth login`
    python -m hub.push RUN_DIR --dry-run OUT_DIR                     # write exactly what would be uploaded

The upload is one thin call into huggingface_hub (create_repo + upload_folder); everything before it is built
here and tested offline.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from hub import settings as project

from hub.card import PLOTS

REQUIRED = ["model.safetensors", "config.json", "misclassified.safetensors", "misclassified.json"]
# The card shows each plot the run has (the same list, so every picture it links is uploaded); ood.safetensors holds
# the out-of-distribution detector's statistics where its score needs them (s10/ood.py).
OPTIONAL = [*PLOTS, "ood.safetensors"]


class PushError(Exception):
    """One line for the user; exit code 2."""


def stage(run: Path, repo_id: str, out: Path) -> list[str]:
    """Write the repo's files into `out`: the weights, config, misclassified pack and plots of run/model, and a model
    card naming `repo_id`. Returns the file names."""
    from hub.card import build_card

    model_dir = Path(run) / "model"
    missing = [n for n in REQUIRED if not (model_dir / n).is_file()]
    missing += [n for n in ("results.json", "config.json") if not (Path(run) / n).is_file()]
    if missing:
        raise PushError(f"{run} is not a finished run folder (missing {', '.join(missing)})")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name in REQUIRED + OPTIONAL:
        src = model_dir / name if (model_dir / name).is_file() else Path(run) / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            names.append(name)
    build_card(Path(run), repo_id).save(out / "README.md")
    return sorted(names + ["README.md"])


def upload(folder: Path, repo_id: str, private: bool, repo_type: str = "model", message: str = "") -> str:
    """create_repo (if needed) + upload_folder, one commit. The token comes from huggingface_hub's usual places."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then try again")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True,
                        **({"space_sdk": "gradio"} if repo_type == "space" else {}))
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                 commit_message=message or f"Upload from s10 ({folder.name})")
    except Exception as err:  # offline, 401, 403, 404...: one line, never the token
        text = (str(err).splitlines() or [type(err).__name__])[0].replace(token, "***")
        raise PushError(f"upload to {repo_id} failed: {type(err).__name__}: {text}") from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"


def push_run(run: str | Path, repo_id: str | None = None, private: bool = False, dry_run: Path | None = None) -> str:
    repo_id = repo_id or project.load().model_repo
    if dry_run:
        names = stage(Path(run), repo_id, Path(dry_run))
        return f"dry run: {len(names)} files for {repo_id} in {dry_run}: {', '.join(names)}"
    with tempfile.TemporaryDirectory() as tmp:
        stage(Path(run), repo_id, Path(tmp) / "model")
        return upload(Path(tmp) / "model", repo_id, private, message=f"S10 model from run {Path(run).name}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.push", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (holding model/)")
    parser.add_argument("--repo-id", help="USER/NAME (default: model_repo in project.json)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--dry-run", type=Path, metavar="OUT_DIR", help="write the files instead of uploading")
    args = parser.parse_args(argv)
    try:
        print(push_run(args.run, args.repo_id, args.private, args.dry_run))
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
