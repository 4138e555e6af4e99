import json

import pytest
import torch

from s10.model import CAM_LAYERS, S10Config, S10Net


def test_parameter_count_and_shape():
    model = S10Net().eval()
    assert sum(p.numel() for p in model.parameters()) == 6_573_130
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 10)


def test_stage_names_and_feature_shapes():
    model = S10Net().eval()
    names = dict(model.named_modules())
    for name in ["prep", "layer1", "layer1.res", "layer2", "layer3", "layer3.res", "head"]:
        assert name in names
    shapes = {}
    hooks = [names[n].register_forward_hook(lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape)))
             for n in CAM_LAYERS]
    model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert shapes == {"prep": (1, 64, 32, 32), "layer1": (1, 128, 16, 16), "layer1.res": (1, 128, 16, 16),
                      "layer2": (1, 256, 8, 8), "layer3": (1, 512, 4, 4), "layer3.res": (1, 512, 4, 4)}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 8 and all(c.bias is None for c in convs)


def test_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = S10Net(S10Config(num_classes=3, class_names=["a", "b", "c"])).eval()
    x = torch.randn(4, 3, 32, 32)
    model.save_pretrained(tmp_path)
    assert {"model.safetensors", "config.json"} <= {p.name for p in tmp_path.iterdir()}
    loaded = S10Net.from_pretrained(tmp_path)
    assert not loaded.training
    assert loaded.config.class_names == ["a", "b", "c"]
    assert torch.equal(loaded(x), model(x))
    assert json.loads((tmp_path / "config.json").read_text())["cam_layers"] == CAM_LAYERS


def test_config_is_strict():
    with pytest.raises(ValueError, match="unknown keys"):
        S10Config.from_dict({"num_classes": 10, "colour": "red"})
    with pytest.raises(ValueError, match="class names"):
        S10Config(num_classes=3)
