"""Models: backbones by name (``backbones``), SMSE's PNN (``pnn``) and the
networks of the four methods (``nets``)."""

from .backbones import backbone_names, build_backbone
from .nets import DSMLNet, PatchNet
from .pnn import PNN

__all__ = ["PNN", "DSMLNet", "PatchNet", "backbone_names", "build_backbone"]
