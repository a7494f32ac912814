"""Feature-map backbones by name: SMSE's ``pnn`` or a torchvision classifier cut
before its global pooling, with optional pretrained weights (``docs/learn.md``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from multimag.errors import ConfigError

from .pnn import PNN

# the node whose output is the last feature map, per torchvision family
_FEATURE_NODES = {
    "resnet": "layer4", "resnext": "layer4", "wide_resnet": "layer4",
    "efficientnet": "features", "mobilenet": "features", "convnext": "features",
    "densenet": "features", "vgg": "features", "regnet": "trunk_output",
    "inception_v3": "Mixed_7c",
}


def _family(name: str) -> str | None:
    return next((f for f in sorted(_FEATURE_NODES, key=len, reverse=True)
                 if name.startswith(f)), None)


def backbone_names() -> list[str]:
    import torchvision

    names = [n for n in torchvision.models.list_models(torchvision.models) if _family(n)]
    return ["pnn", *sorted(names)]


def _weights_arg(name: str, weights: str | None):
    """torchvision's ``weights=`` argument, or a local file's state dict."""
    import torchvision

    if weights is None:
        return None, None
    path = Path(weights)
    if path.suffix in (".pt", ".pth", ".bin", ".safetensors") or path.exists():
        if not path.is_file():
            raise ConfigError(f"the weights file for backbone {name!r} does not exist",
                              path=path, fix="set model.weights to an existing state dict "
                              "file, a torchvision weight name, or null")
        return None, path
    try:
        if weights == "DEFAULT":
            return torchvision.models.get_model_weights(name).DEFAULT, None
        return torchvision.models.get_weight(weights), None
    except (ValueError, KeyError, AttributeError) as exc:
        raise ConfigError(f"unknown torchvision weights {weights!r} for {name!r}",
                          fix="use 'DEFAULT', a name such as ResNet50_Weights.IMAGENET1K_V2, "
                          "a local .pth file, or null") from exc


class TorchvisionBackbone(nn.Module):
    def __init__(self, name: str, weights: str | None = None) -> None:
        super().__init__()
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        family = _family(name)
        if family is None or name not in torchvision.models.list_models(torchvision.models):
            raise ConfigError(f"unknown backbone {name!r}",
                              fix=f"use one of: {', '.join(backbone_names())}")
        tv_weights, state_path = _weights_arg(name, weights)
        kwargs = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
        if name == "inception_v3" and tv_weights is not None:
            kwargs = {"aux_logits": True}  # torchvision's pretrained inception has aux logits
        model = torchvision.models.get_model(name, weights=tv_weights, **kwargs)
        if state_path is not None:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict)
                                      else state)
            except RuntimeError as exc:
                raise ConfigError(f"the weights do not fit {name} ({str(exc)[:200]})",
                                  path=state_path, fix="use a state dict saved from "
                                  f"torchvision's {name}") from exc
        self.body = create_feature_extractor(model, {_FEATURE_NODES[family]: "out"})
        self.min_side = 75 if name == "inception_v3" else 32
        with torch.no_grad():
            was = model.training
            self.body.eval()
            probe = self.body(torch.zeros(1, 3, 96, 96))["out"]
            self.body.train(was)
        self.out_channels = int(probe.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["out"]


def build_backbone(name: str, weights: str | None = None, pnn_width: int = 16) -> nn.Module:
    if name == "pnn":
        if weights is not None:
            backbone = PNN(pnn_width)
            path = Path(weights)
            if not path.is_file():
                raise ConfigError("the weights file for the PNN backbone does not exist",
                                  path=path, fix="set model.weights to an existing file or null")
            backbone.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return backbone
        return PNN(pnn_width)
    return TorchvisionBackbone(name, weights)
