"""torch.hub entry points for the S10 ResNet (https://pytorch.org/docs/stable/hub.html):

    model = torch.hub.load("s10-project/s10", "s10_cifar10")   # the released model: eval mode, CPU, calibrated
    probs = model.probabilities(model.normalize(images))       # images: uint8 (B, 3, 32, 32)

The weights come from the Hub model repo named in project.json (downloaded once into the HF cache, then read from
there); when the Hub cannot be reached and nothing is cached, from release/model in the repository that torch.hub
fetched, which holds the same released weights.
"""

dependencies = ["torch", "huggingface_hub", "safetensors"]


def s10_cifar10(pretrained: bool = True, revision: str | None = None):
    """The S10 ResNet for CIFAR-10.

    Args:
        pretrained: the released weights (default), else a freshly initialised network with the same config.
        revision: a commit, branch or tag of the Hub model repo (default: its main branch).
    """
    from pathlib import Path

    from hub.settings import load as project_settings
    from s10.model import S10Net

    if not pretrained:
        return S10Net()
    try:
        return S10Net.from_pretrained(project_settings().model_repo, revision=revision)
    except FileNotFoundError:  # the Hub out of reach and no cached copy: the weights this repository ships
        return S10Net.from_pretrained(Path(__file__).resolve().parent / "release" / "model")
