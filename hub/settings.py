"""The project's names, kept in one place: project.json at the repository root.

Environment variables override it (S10_HF_USER, S10_MODEL_REPO, S10_SPACE_REPO, S10_GITHUB_URL), so
`make publish S10_HF_USER=me` style overrides work without editing files. The GitHub URL is, in order:
S10_GITHUB_URL, `git remote get-url origin` when it is a page a reader can open (a clone of a local folder or a
mirror on disk is not), project.json's github_url.

`load(committed=True)` reads project.json alone: the committed model card is a function of committed files, so a
clean clone renders it byte for byte whatever its remote or environment (`make publish` renders the uploaded card
with the overrides).
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Settings:
    hf_user: str  # Hugging Face user or organisation that owns the repos
    model_repo: str  # model repo id, "user/name"
    space_repo: str  # Space repo id, "user/name"
    github_url: str  # the training code's home, https://github.com/...

    @property
    def model_url(self) -> str:
        return f"https://huggingface.co/{self.model_repo}"

    @property
    def space_url(self) -> str:
        return f"https://huggingface.co/spaces/{self.space_repo}"

    def as_dict(self) -> dict:
        return {**asdict(self), "model_url": self.model_url, "space_url": self.space_url}


def git_remote_url(root: Path = ROOT) -> str | None:
    try:
        proc = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True, cwd=root,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return web_url(proc.stdout.strip()) if proc.returncode == 0 else None


def web_url(remote: str) -> str | None:
    """The page behind a git remote, or None where there is none (a path, file://, a host over ssh we cannot map)."""
    if remote.startswith("git@github.com:"):  # ssh remote -> the page a reader can open
        remote = "https://github.com/" + remote.split(":", 1)[1]
    elif remote.startswith("ssh://git@github.com/"):
        remote = "https://github.com/" + remote.removeprefix("ssh://git@github.com/")
    if not remote.startswith(("https://", "http://")):
        return None
    return remote.removesuffix("/").removesuffix(".git")


def load(path: Path = ROOT / "project.json", *, committed: bool = False) -> Settings:
    data = json.loads(path.read_text())
    env = {} if committed else os.environ
    user = env.get("S10_HF_USER") or data["hf_user"]
    if env.get("S10_HF_USER"):  # a new owner: the repo names follow unless set too
        data["model_repo"] = f"{user}/{data['model_repo'].split('/', 1)[1]}"
        data["space_repo"] = f"{user}/{data['space_repo'].split('/', 1)[1]}"
    github = None if committed else env.get("S10_GITHUB_URL") or git_remote_url()
    return Settings(
        hf_user=user,
        model_repo=env.get("S10_MODEL_REPO") or data["model_repo"],
        space_repo=env.get("S10_SPACE_REPO") or data["space_repo"],
        github_url=github or data["github_url"],
    )
