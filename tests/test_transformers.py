"""Components beyond conv filters: MLP neurons and attention heads, in small models and torchvision's ViT."""

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import VisionTransformer, vit_b_16

from compattr.baselines import attribution_patching, first_order_prior, leave_one_out
from compattr.components import ComponentSet
from compattr.discovery import module_components, transformer_components
from compattr.sampling import ComponentMarginEvaluator


def _small_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(
        image_size=8, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=3
    ).eval()


class _TokenMLP(nn.Module):
    """Tokens (batch, 5, 5) through a 5-wide hidden layer: as many tokens as neurons."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 5), nn.Linear(5, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))).mean(1)


class _AttentionPool(nn.Module):
    """Attention, the mean over tokens and a two-class head: the margin is linear in the heads' keep factors."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 4, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        out, _ = self.attn(x, x, x, need_weights=False)
        return self.head(out.mean(1))


def test_ablating_a_neuron_is_zeroing_its_weight_row_and_bias_even_when_tokens_equal_neurons():
    torch.manual_seed(0)
    model = _TokenMLP().eval()
    components = module_components(model, ["fc1"])
    assert components.kinds == ("neurons",) and components.names[0] == "fc1:0"
    x = torch.randn(3, 5, 5)
    keep = torch.ones(1, 5)
    keep[0, 0] = 0
    network = components.ablatable(model)
    edited = _TokenMLP().eval()
    edited.load_state_dict(model.state_dict())
    with torch.no_grad():
        edited.fc1.weight[0] = 0
        edited.fc1.bias[0] = 0
        torch.testing.assert_close(network(x, keep), edited(x))
        torch.testing.assert_close(network(x, torch.ones(1, 5)), model(x))


def test_ablating_a_head_is_zeroing_its_slice_of_the_output_projection_input_in_torchvision_vit():
    model = _small_vit()
    components = transformer_components(model)
    assert components.kinds == ("heads", "neurons", "heads", "neurons")
    assert len(components) == 2 * (2 + 32)
    attention = "encoder.layers.encoder_layer_1.self_attention"
    assert f"{attention}:head1" in components.names and "encoder.layers.encoder_layer_0.mlp.3:in31" in components.names
    x = torch.randn(4, 3, 8, 8)
    network = components.ablatable(model)
    with torch.no_grad():
        torch.testing.assert_close(network(x, torch.ones(1, len(components))), model(x), rtol=1e-4, atol=1e-5)
        head = components.names.index(f"{attention}:head1")
        neuron = components.names.index("encoder.layers.encoder_layer_0.mlp.3:in7")
        keep = torch.ones(1, len(components))
        keep[0, [head, neuron]] = 0
        edited = _small_vit()
        edited.get_submodule(attention).out_proj.weight[:, 8:16] = 0  # head 1 of 2, head size 8
        edited.get_submodule("encoder.layers.encoder_layer_0.mlp.3").weight[:, 7] = 0  # hidden neuron 7's column
        torch.testing.assert_close(network(x, keep), edited(x), rtol=1e-4, atol=1e-5)


def test_per_sample_masks_ablate_each_sample_its_own_heads():
    model = _small_vit()
    components = transformer_components(model)
    x = torch.randn(2, 3, 8, 8)
    masks = torch.rand(3, len(components)) > 0.3
    network = components.ablatable(model)
    with torch.no_grad():
        together = network(x.repeat(3, 1, 1, 1), (~masks).float())  # mask i for samples 2i, 2i + 1
        for i in range(3):
            alone = network(x, (~masks[i : i + 1]).float())
            torch.testing.assert_close(together[2 * i : 2 * i + 2], alone, rtol=1e-4, atol=1e-5)


def test_first_order_effects_of_heads_and_neurons_are_exact_when_the_output_is_linear_in_them():
    torch.manual_seed(1)
    model = _AttentionPool().eval()
    components = module_components(model, ["attn"])
    tokens, labels = torch.randn(5, 6, 8), torch.randint(0, 2, (5,))
    evaluator = ComponentMarginEvaluator(model, components, tokens, labels, batch_size=64)
    exact, unablated = leave_one_out(evaluator, len(components))
    prior, intercept = first_order_prior(model, components, tokens, labels, ablation_rate=0.05)
    np.testing.assert_allclose(prior, exact, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(intercept, unablated, rtol=1e-5, atol=1e-5)
    # neurons of a network linear in them: a hidden layer without nonlinearity
    mlp = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2)).eval()
    neurons = module_components(mlp, ["0"])
    inputs, targets = torch.randn(7, 4), torch.randint(0, 2, (7,))
    exact, _ = leave_one_out(ComponentMarginEvaluator(mlp, neurons, inputs, targets), len(neurons))
    hooked, _ = attribution_patching(mlp, neurons, inputs, targets)
    np.testing.assert_allclose(hooked, exact, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="first_order_prior"):
        attribution_patching(model, components, tokens, labels)


def test_a_component_set_that_does_not_match_a_module_output_names_the_module():
    torch.manual_seed(0)
    model = _TokenMLP().eval()
    wrong = ComponentSet(("fc1",), (4,), ("neurons",))
    with pytest.raises(ValueError, match="'fc1'.*4 neurons.*shape \\(2, 5, 5\\)"):
        wrong.ablatable(model)(torch.randn(2, 5, 5), torch.ones(1, 4))
    attention = ComponentSet(("attn",), (8,), ("neurons",))
    with pytest.raises(TypeError, match="'attn'.*returns a tuple.*'heads'"):
        attention.ablatable(_AttentionPool().eval())(torch.randn(2, 6, 8), torch.ones(1, 8))
    with pytest.raises(ValueError, match="'fc1' is a Linear: heads"):
        ComponentSet(("fc1",), (5,), ("heads",)).ablatable(model)
    with pytest.raises(ValueError, match="unknown component kinds \\['filters'\\]"):
        ComponentSet(("fc1",), (5,), ("filters",))
    with pytest.raises(ValueError, match="'relu' is a ReLU"):
        module_components(_relu_model(), ["relu"])


def _relu_model():
    model = nn.Sequential()
    model.add_module("fc", nn.Linear(2, 2))
    model.add_module("relu", nn.ReLU())
    return model


def test_vit_b16_has_144_heads_and_36864_mlp_neurons():
    with torch.device("meta"):  # the definition only: no weights, no memory
        model = vit_b_16()
    components = transformer_components(model)
    assert components.sizes.count(12) == 12 and components.sizes.count(3072) == 12
    assert len(components) == 144 + 36_864
    assert components.names[0] == "encoder.layers.encoder_layer_0.self_attention:head0"
    assert components.names[-1] == "encoder.layers.encoder_layer_11.mlp.3:in3071"
    assert len(transformer_components(model, neurons=False)) == 144


def test_the_front_door_attributes_a_vision_transformer_to_its_heads_and_neurons():
    from compattr.attributor import ComponentAttributor

    model = _small_vit()
    images, labels = torch.randn(4, 3, 8, 8), torch.randint(0, 3, (4,))
    attributor = ComponentAttributor(model, "heads", images, labels, batch_size=64)
    assert list(attributor.components.names) == [
        f"encoder.layers.encoder_layer_{b}.self_attention:head{h}" for b in range(2) for h in range(2)
    ]
    result = attributor.attribute("loo")
    assert result.coef.shape == (4, 4) and np.isfinite(result.coef).all()
    assert len(ComponentAttributor(model, "neurons", images, labels).components) == 64
    with pytest.raises(ValueError, match="'transformer'"):
        ComponentAttributor(model, "filters", images, labels)


def test_a_small_vit_on_one_channel_images_saves_and_loads_with_its_heads_and_neurons(tmp_path):
    from compattr.checkpoints import load_checkpoint, save_checkpoint
    from compattr.models import build_model, study_components

    arch = {"name": "vit", "image_size": 8, "patch_size": 2, "layers": 3, "heads": 4, "hidden": 32, "mlp": 64}
    model = build_model(arch, num_classes=10, in_channels=1, seed=0).eval()
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    spec = {"kind": "transformer"}
    save_checkpoint(tmp_path / "vit.pt", model, arch, num_classes=10, in_channels=1, components=spec)
    loaded, components = load_checkpoint(tmp_path / "vit.pt")
    assert components == study_components(model, spec) and len(components) == 3 * (4 + 64)
    assert components.kinds == ("heads", "neurons") * 3
    with pytest.raises(ValueError, match="components.kind must be"):
        study_components(model, {"kind": "filters"})
    with pytest.raises(ValueError, match="image_size 8 is not a multiple of model.arch.patch_size 3"):
        build_model({**arch, "patch_size": 3}, num_classes=10, in_channels=1)


def test_checkpoints_from_before_component_kinds_load_their_conv_filters(tmp_path):
    from compattr.checkpoints import load_checkpoint
    from compattr.models import build_model

    arch = {"name": "cifar_resnet", "widths": [4, 8], "blocks": [1, 1]}
    model = build_model(arch, num_classes=10, in_channels=1, seed=0)
    old = {"arch": arch, "num_classes": 10, "in_channels": 1, "include_shortcuts": False}
    torch.save({**old, "state_dict": model.state_dict()}, tmp_path / "old.pt")
    _, components = load_checkpoint(tmp_path / "old.pt")
    assert set(components.kinds) == {"channels"} and not any("downsample" in n for n in components.module_names)


def test_the_text_corpus_gives_next_character_windows_and_a_causal_model_ablates_like_its_weights():
    from compattr.data import load_dataset
    from compattr.models import build_model

    train, test = load_dataset("text", test_fraction=0.1, context=16, stride=4, num_classes=40)
    assert train.images.shape[1] == 16 and train.images.dtype == torch.int64 and train.num_classes == 40
    # each label is the character after its window: train windows start 4 apart, test windows side by side
    assert torch.equal(train.images[1, :12], train.images[0, 4:]) and train.labels[0] == train.images[1, 12]
    assert test.labels[0] == test.images[1, 0] and test.labels[1] == test.images[2, 0]
    assert int(train.images.max()) < 40 and int(test.labels.max()) < 40
    arch = {"name": "text_transformer", "context": 16, "layers": 2, "heads": 2, "hidden": 16, "mlp": 24}
    model = build_model(arch, num_classes=40, in_channels=16, seed=0).eval()
    components = transformer_components(model)
    assert components.module_names == ("blocks.0.attn", "blocks.0.mlp.2", "blocks.1.attn", "blocks.1.mlp.2")
    tokens = test.images[:5]
    network = components.ablatable(model)
    keep = torch.ones(1, len(components))
    keep[0, components.names.index("blocks.1.attn:head0")] = 0
    edited = build_model(arch, num_classes=40, in_channels=16, seed=0).eval()
    edited.load_state_dict(model.state_dict())
    keep[0, components.names.index("blocks.0.mlp.2:in3")] = 0
    keep[0, components.names.index("blocks.1.mlp.2:in5")] = 0
    with torch.no_grad():
        torch.testing.assert_close(network(tokens, torch.ones(1, len(components))), model(tokens), rtol=1e-4, atol=1e-5)
        edited.blocks[1].attn.out_proj.weight[:, :8] = 0
        for block, neuron in ((0, 3), (1, 5)):
            edited.blocks[block].mlp[2].weight[:, neuron] = 0  # the hidden neuron's column of the down projection
        torch.testing.assert_close(network(tokens, keep), edited(tokens), rtol=1e-4, atol=1e-5)


def test_the_language_model_computes_its_last_block_at_the_read_out_position_alone():
    from compattr.models import build_model

    arch = {"name": "text_transformer", "context": 12, "layers": 3, "heads": 2, "hidden": 16, "mlp": 24}
    model = build_model(arch, num_classes=30, in_channels=12, seed=0).eval()
    tokens = torch.randint(0, 30, (6, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = model.embed(tokens) + model.position
        for block in model.blocks:  # every block at every position, then the last position read out
            x = block(x)
        assert x.shape == (6, 12, 16)
        torch.testing.assert_close(model(tokens), model.head(model.ln_f(x[:, -1])), rtol=1e-5, atol=1e-5)


class _Attend(nn.Module):
    """One attention call of the kind ``case`` names, its output flattened per sample."""

    def __init__(self, case):
        super().__init__()
        self.case = case
        self.attn = nn.MultiheadAttention(8, 4, batch_first=case != "tokens_first")
        generator = torch.Generator().manual_seed(1)
        self.bool_mask = (torch.rand(6, 6, generator=generator) > 0.6).fill_diagonal_(False)
        self.float_mask = torch.randn(6, 6, generator=generator)

    def forward(self, x):
        query, kwargs = x, {"need_weights": False}
        if self.case == "one_query":
            query = x[:, -1:]
        elif self.case == "tokens_first":
            query = x = x.transpose(0, 1)
        elif self.case in ("bool_mask", "float_mask"):
            kwargs["attn_mask"] = getattr(self, self.case)
        elif self.case == "causal":
            kwargs.update(attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1), is_causal=True)
        elif self.case == "weights":
            kwargs["need_weights"] = True
        elif self.case == "padding":
            kwargs["key_padding_mask"] = torch.arange(6).expand(len(x), 6) > 3
        out, _ = self.attn(query, x, x, **kwargs)
        return (out.transpose(0, 1) if self.case == "tokens_first" else out).flatten(1)


@pytest.mark.parametrize(
    "case", ["self", "one_query", "tokens_first", "bool_mask", "float_mask", "causal", "weights", "padding"]
)
def test_masked_heads_equal_zeroed_projection_slices_for_every_kind_of_attention_call(case):
    torch.manual_seed(0)
    model = _Attend(case).eval()
    heads = module_components(model, ["attn"])
    x = torch.randn(5, 6, 8)
    keep = (torch.rand(5, 4) > 0.4).float()
    with torch.no_grad():
        masked = heads.ablatable(model)(x, keep)
        for i in range(5):  # each sample: its ablated heads' slices of the projection's input zeroed
            edited = _Attend(case).eval()
            edited.load_state_dict(model.state_dict())
            edited.attn.out_proj.weight.mul_(keep[i].repeat_interleave(2))
            torch.testing.assert_close(masked[i : i + 1], edited(x[i : i + 1]), rtol=1e-5, atol=1e-5)


def test_mean_ablation_replaces_each_unit_by_its_mean_output():
    from compattr.components import component_means
    from compattr.discovery import conv_components

    torch.manual_seed(0)
    # neurons: the mean over inputs and tokens; ablated, a neuron outputs it (weight row 0, bias = mean)
    model = _TokenMLP().eval()
    x = torch.randn(6, 5, 5)
    neurons = module_components(model, ["fc1"])
    means = component_means(model, neurons, x, batch_size=4)
    with torch.no_grad():
        np.testing.assert_allclose(means["fc1"], model.fc1(x).mean((0, 1)), rtol=1e-5, atol=1e-6)
        keep = torch.ones(1, 5)
        keep[0, 2] = 0
        edited = _TokenMLP().eval()
        edited.load_state_dict(model.state_dict())
        edited.fc1.weight[2], edited.fc1.bias[2] = 0, means["fc1"][2]
        torch.testing.assert_close(neurons.with_means(means).ablatable(model)(x, keep), edited(x))
    # heads: ablated, a head's slice of the projection's input is its mean, folded into the bias
    vit = _small_vit()
    heads = transformer_components(vit, neurons=False)
    images = torch.randn(5, 3, 8, 8)
    means = component_means(vit, heads, images)
    name = "encoder.layers.encoder_layer_0.self_attention"
    assert means[name].shape == (2, 8) and heads.with_means(means).ablation == "mean"
    with torch.no_grad():
        keep = torch.ones(1, 4)
        keep[0, 1] = 0  # head 1 of block 0
        edited = _small_vit()
        projection = edited.get_submodule(name).out_proj
        projection.bias += projection.weight[:, 8:] @ means[name][1]
        projection.weight[:, 8:] = 0
        torch.testing.assert_close(
            heads.with_means(means).ablatable(vit)(images, keep), edited(images), rtol=1e-4, atol=1e-5
        )
    # filters folded into their BatchNorm: the same as replacing the conv's output channel by its mean
    conv = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 2))
    conv[1].running_mean.uniform_(-1, 1)
    conv.eval()
    filters = conv_components(conv)
    pictures = torch.randn(7, 1, 5, 5)
    means = component_means(conv, filters, pictures)
    network = filters.with_means(means).ablatable(conv)
    assert network.n_folded == 4
    handle = conv[0].register_forward_hook(
        lambda m, a, out: torch.cat([out[:, :3], means["0"][3].expand_as(out[:, 3:])], 1)
    )
    with torch.no_grad():
        keep = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
        torch.testing.assert_close(network(pictures, keep), conv(pictures), rtol=1e-5, atol=1e-5)
    handle.remove()


def test_first_order_effects_under_mean_ablation_are_exact_when_the_output_is_linear():
    from compattr.components import component_means

    torch.manual_seed(2)
    model = _AttentionPool().eval()
    tokens, labels = torch.randn(5, 6, 8), torch.randint(0, 2, (5,))
    heads = module_components(model, ["attn"])
    heads = heads.with_means(component_means(model, heads, torch.randn(20, 6, 8)))
    exact, _ = leave_one_out(ComponentMarginEvaluator(model, heads, tokens, labels), len(heads))
    prior, _ = first_order_prior(model, heads, tokens, labels, ablation_rate=0.05)
    np.testing.assert_allclose(prior, exact, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="mean ablation"):
        attribution_patching(model, heads, tokens, labels)
