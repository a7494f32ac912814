"""Networks: SMSE's PNN, torchvision backbones by name (no downloads: weights None
or a local file), the embedding / classifier / projection heads, DSML fusion."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from multimag.errors import ConfigError
from multimag.learn.methods import get_method
from multimag.learn.methods.constellation import constellation_triples
from multimag.learn.methods.mpcs import label_subset
from multimag.learn.models import DSMLNet, PatchNet, build_backbone
from multimag.learn.models.backbones import backbone_names
from multimag.learn.models.pnn import PNN


def test_pnn_has_prelu_after_every_parametric_layer_and_any_patch_size():
    net = PNN(4)
    layers = list(net.modules())
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4
    for i in convs:  # conv -> batch norm -> PReLU
        assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.PReLU)
    for side in (16, 32, 64):
        assert net(torch.zeros(2, 3, side, side)).shape == (2, 32, side // 16, side // 16)


@pytest.mark.parametrize(("name", "side"), [("resnet18", 64), ("resnet50", 64),
                                            ("efficientnet_b2", 64), ("inception_v3", 80)])
def test_torchvision_backbones_by_name_feed_the_heads(name, side):
    torch.manual_seed(0)
    net = PatchNet(build_backbone(name, None), embed_dim=12, projection_dim=8,
                   projection_hidden=16).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 3, side, side))
    assert out["embedding"].shape == (2, 12)
    assert out["logits"].shape == (2, 2)
    assert out["projection"].shape == (2, 8)
    assert out["pooled"].shape == (2, net.backbone.out_channels)
    # the heads really read the backbone: the classifier is a function of the embedding
    torch.testing.assert_close(out["logits"], net.classifier(out["embedding"]))


def test_backbone_names_and_errors(tmp_path):
    names = backbone_names()
    for name in ("pnn", "resnet18", "resnet50", "inception_v3", "efficientnet_b2"):
        assert name in names
    with pytest.raises(ConfigError, match="unknown backbone 'resnet5000'"):
        build_backbone("resnet5000")
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("resnet18", str(tmp_path / "nope.pth"))
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone("pnn", str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="unknown torchvision weights"):
        build_backbone("resnet18", "NotAWeight")


def test_weights_from_a_local_file_are_loaded(tmp_path):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = build_backbone("resnet18", str(path))
    got = dict(backbone.named_parameters())
    torch.testing.assert_close(got["body.conv1.weight"], reference.conv1.weight)
    torch.testing.assert_close(got["body.layer4.1.conv2.weight"], reference.layer4[1].conv2.weight)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ConfigError, match="do not fit resnet18"):
        build_backbone("resnet18", str(tmp_path / "r34.pth"))


def test_dsml_fuses_weighted_softmaxes():
    torch.manual_seed(1)
    net = DSMLNet(lambda: PNN(4), 2, weights=[0.3, 0.7]).eval()
    views = [torch.rand(3, 3, 32, 32), torch.rand(3, 3, 16, 16)]
    with torch.no_grad():
        out = net(views)
    want = 0.3 * out["logits"][0].softmax(1) + 0.7 * out["logits"][1].softmax(1)
    torch.testing.assert_close(out["probs"], want)
    torch.testing.assert_close(out["probs"].sum(1), torch.ones(3))
    assert [f.shape[1] for f in out["feature_maps"]] == [32, 32]
    assert not any("weight_logits" in n for n, _ in net.named_parameters())
    learnable = DSMLNet(lambda: PNN(4), 2, learnable=True)
    assert "weight_logits" in dict(learnable.named_parameters())
    torch.testing.assert_close(learnable.fusion_weights, torch.tensor([0.5, 0.5]))
    with pytest.raises(ConfigError, match="summing to 1"):
        DSMLNet(lambda: PNN(4), 2, weights=[0.5, 0.6])


def test_build_model_per_method(tmp_path):
    from multimag.config import validate_config

    config = validate_config({"model": {"backbone": "pnn", "pnn_width": 4},
                              "magnifications": [20, 10, 5]})
    assert isinstance(get_method("dsml").build_model(config), DSMLNet)
    assert get_method("mpcs_pretrain").build_model(config).projection is not None
    assert get_method("smse_triplet").build_model(config).projection is None
    config["model"]["backbone"] = "vit_nonexistent"
    with pytest.raises(ConfigError, match="unknown backbone"):
        get_method("ce_baseline").build_model(config)


def test_constellation_triples_pick_same_class_positives_and_other_class_negatives():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    emb = torch.arange(6, dtype=torch.float32).view(6, 1).repeat(1, 3)
    anchor, positive, negatives = constellation_triples(emb, labels)
    a_lab = labels[anchor[:, 0].long()]
    p_lab = labels[positive[:, 0].long()]
    assert torch.equal(a_lab, p_lab)
    assert not torch.equal(anchor, positive)
    assert negatives.shape[:2] == (len(anchor), 3)
    n_lab = labels[negatives[..., 0].long()]
    assert (n_lab != a_lab[:, None]).all()


def test_label_subset_is_a_seeded_stratified_fraction():
    import pandas as pd

    table = pd.DataFrame({"slide_id": "s", "patch": range(300),
                          "label": [1] * 100 + [0] * 200})
    sub = label_subset(table, 0.2, seed=0)
    assert sub["label"].value_counts().to_dict() == {0: 40, 1: 20}
    assert sub.equals(label_subset(table, 0.2, seed=0))
    assert not sub.equals(label_subset(table, 0.2, seed=1))
