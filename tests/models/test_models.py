import pytest
import torch
from conftest import tiny_model

from protomdm import ModelConfig, ProtoPNet, XProtoNet, build_model, load_model, save_checkpoint
from protomdm.errors import ConfigError, UserError
from protomdm.models import architecture_class, list_architectures
from protomdm.models.backbones import build_backbone
from protomdm.models.losses import LossConfig
from protomdm.models.protopnet import squared_l2_distances


def test_protopnet_distances_match_brute_force():
    z = torch.randn(2, 5, 4, 3)
    p = torch.randn(7, 5, 1, 1)
    brute = ((z[:, None] - p[None, :, :, 0, 0, None, None]) ** 2).sum(2)
    assert torch.allclose(squared_l2_distances(z, p), brute, atol=1e-4)


def test_protopnet_score_of_a_matching_patch_survives_bf16_autocast():
    """A prototype equal to a latent patch scores log(1 / eps) in fp32; under bf16 autocast the distance's
    cancellation (z2 - 2 zp + p2) must not turn that 0 into rounding error."""
    model = tiny_model("protopnet", seed=0).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z = model.conv_features(x)
        model.prototype_vectors[0] = z[0, :, 1, 1, None, None]  # as a push sets it
        exact = model.prototype_scores(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.prototype_scores(x)
    assert float(exact[0, 0]) > 9.0  # log(1 / 1e-4): the patch itself
    assert torch.allclose(low.float(), exact, atol=0.3)  # the features themselves are bf16


def test_xprotonet_score_of_its_own_pooled_feature_survives_bf16_autocast():
    model = tiny_model("xprotonet", seed=0).eval()
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        feats, occ = model.heads(x)
        model.prototype_vectors[0] = model.pooled_features(feats, occ)[0, 0]  # as a push sets it
        exact = model.prototype_scores(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.prototype_scores(x)
    assert float(exact[0, 0]) > 9.0
    assert torch.allclose(low.float(), exact, atol=0.3)


def test_protopnet_structure_and_outputs():
    m = tiny_model("protopnet")
    assert isinstance(m, ProtoPNet)
    assert m.prototype_shape == (6, 16, 1, 1)
    # class identity: prototype j belongs to class j // 2
    assert m.prototype_class_identity.argmax(1).tolist() == [0, 0, 1, 1, 2, 2]
    w = m.last_layer.weight
    assert w.shape == (3, 6) and m.last_layer.bias is None
    assert torch.equal(w, torch.where(m.prototype_class_identity.t() > 0, 1.0, -0.5))
    assert isinstance(m.add_on_layers[-1], torch.nn.Sigmoid)
    x = torch.randn(2, 3, 48, 48)
    z, d = m.push_forward(x)
    assert z.shape == (2, 16, 6, 6) and d.shape == (2, 6, 6, 6)
    sim = m.prototype_similarity_maps(x)
    assert torch.allclose(sim, torch.log((d + 1) / (d + 1e-4)), atol=1e-5)
    # the score is the max-pooled similarity map; the logits are the last layer applied to it
    scores = m.prototype_scores(x)
    assert torch.allclose(scores, sim.flatten(2).max(2).values, atol=1e-5)
    assert torch.allclose(m(x), scores @ w.t(), atol=1e-5)
    # a subset of prototypes gives the same values as the whole
    assert torch.allclose(m.prototype_similarity_maps(x, [4, 1]), sim[:, [4, 1]], atol=1e-5)


def test_protopnet_linear_activation():
    m = tiny_model("protopnet", activation="linear")
    x = torch.randn(1, 3, 48, 48)
    _, d = m.push_forward(x)
    assert torch.allclose(m.prototype_similarity_maps(x), -d)


def test_xprotonet_outputs():
    m = tiny_model("xprotonet")
    assert isinstance(m, XProtoNet)
    x = torch.randn(2, 3, 48, 48)
    out = m.outputs(x)
    assert out.logits.shape == (2, 3) and out.similarities.shape == (2, 6) and out.occurrence.shape == (2, 6, 6, 6)
    assert out.similarities.min() >= 0 and out.similarities.max() <= 1
    assert out.occurrence.min() >= 0 and out.occurrence.max() <= 1
    # class c is predicted from its own prototypes only
    per_class = out.similarities.view(2, 3, 2)
    assert torch.allclose(out.logits, (per_class * m.class_weight).sum(-1) + m.class_bias, atol=1e-5)
    assert torch.allclose(m.prototype_scores(x, [5]), out.similarities[:, [5]], atol=1e-5)
    assert torch.allclose(m.localization_maps(x, 2), out.occurrence[:, [2]])


@pytest.mark.parametrize("name,channels", [("resnet18", 512), ("vgg11", 512), ("densenet121", 1024)])
def test_torchvision_backbones_build_without_download(name, channels):
    features, c = build_backbone(name, pretrained=False)
    assert c == channels
    with torch.no_grad():
        assert features(torch.zeros(1, 3, 64, 64)).shape[1] == channels


def test_grey_input_backbone():
    features, c = build_backbone("resnet18", in_channels=1)
    with torch.no_grad():
        assert features(torch.zeros(1, 1, 64, 64)).shape[1] == c


def test_bad_model_configs_are_one_clear_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_model(ModelConfig(backbone="resnet9000"))
    with pytest.raises(ConfigError, match="unknown architecture 'protonet'; choose one of protopnet, xprotonet"):
        build_model(ModelConfig(architecture="protonet"))  # checked against the registry when built
    with pytest.raises(ConfigError, match="activation of a xprotonet"):
        build_model(ModelConfig(architecture="xprotonet", activation="linear"))
    with pytest.raises(ConfigError, match="mean and std"):
        ModelConfig(in_channels=1)


def test_prototype_index_range_is_named():
    m = tiny_model()
    with pytest.raises(UserError, match=r"prototypes 0\.\.5"):
        m.prototype_scores(torch.zeros(1, 3, 48, 48), [6])


@pytest.mark.parametrize("name", list_architectures())
def test_every_registered_architecture_owns_its_training_push_and_class_connections(name, tmp_path):
    """The contract the trainer, push and case reports rely on, for every registered architecture."""
    model = tiny_model(name, activation=architecture_class(name).activations[0])
    groups = model.parameter_groups()
    assert set(groups) == {"features", "add_on", "prototypes", "last"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}  # each exactly once
    x = torch.rand(4, 3, 48, 48)
    multi = model.multilabel
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]) if multi else torch.tensor([0, 1, 2, 0])
    aug = model.draw_augmentation(4, torch.Generator().manual_seed(0), torch.device("cpu"))
    loss, parts, logits = model.training_loss(x, y, LossConfig(), True, None, aug)
    assert loss.requires_grad and torch.isfinite(loss) and logits.shape == (4, 3) and parts
    own = torch.ones(4, model.num_prototypes, dtype=torch.bool)
    with torch.no_grad():
        dist, vecs, where = model.push_candidates(x, own)
    assert dist.shape == (model.num_prototypes,) and where.shape == (model.num_prototypes, 3)
    assert vecs.shape[0] == model.num_prototypes and (where[:, 0] < 4).all()
    weight, bias = model.class_connections()
    with torch.no_grad():  # the class connections and the prototype scores give the logits
        assert torch.allclose(model.prototype_scores(x) @ weight.t() + bias, model(x), atol=1e-5)
    loaded = load_model(save_checkpoint(model, tmp_path / "m.pt"))
    assert type(loaded) is type(model) and loaded.config == model.config
