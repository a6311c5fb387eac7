"""Hugging Face transformers and torchvision's modern blocks, as users have them: random weights, no downloads.

Every discovered head and neuron is checked against an ablation written by hand on the weights
(zero ablation: the unit's columns of its projection zeroed; mean ablation: folded into the bias).
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import compattr
from compattr.discovery import linear_features, module_components, transformer_components
from compattr.outputs import margins

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests build random-weight models: nothing to fetch
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
README = Path(__file__).resolve().parents[1] / "README.md"
VOCAB, TOKENS = 13, 6


def _gpt2() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=8, vocab_size=VOCAB, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


def _llama(family: str = "Llama") -> nn.Module:  # grouped-query attention: 4 query heads share 2 key and value heads
    torch.manual_seed(0)
    config = getattr(transformers, f"{family}Config")(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=16,
        intermediate_size=12,
        vocab_size=VOCAB,
    )
    return getattr(transformers, f"{family}ForCausalLM")(config).eval()


def _bert() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        num_hidden_layers=2, num_attention_heads=2, hidden_size=8, intermediate_size=12, vocab_size=VOCAB, num_labels=3
    )
    return transformers.BertForSequenceClassification(config).eval()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        num_hidden_layers=2,
        num_attention_heads=2,
        hidden_size=8,
        intermediate_size=12,
        image_size=8,
        patch_size=4,
        num_labels=3,
        num_channels=1,
    )
    return transformers.ViTForImageClassification(config).eval()


def _inputs(name: str, n: int = 5) -> tuple[dict, torch.Tensor]:
    """A batch as the model's processor gives it (no padding), and targets: next tokens or classes."""
    generator = torch.Generator().manual_seed(1)
    if name == "vit":
        return {"pixel_values": torch.randn(n, 1, 8, 8, generator=generator)}, torch.randint(0, 3, (n,))
    ids = torch.randint(0, VOCAB, (n, TOKENS), generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    classes = 3 if name == "bert" else VOCAB
    return batch, torch.randint(0, classes, (n,), generator=generator)


MODELS = {
    "gpt2": _gpt2,
    "llama": _llama,
    "mistral": lambda: _llama("Mistral"),
    "qwen2": lambda: _llama("Qwen2"),
    "bert": _bert,
    "vit": _vit,
}
# (heads per attention module, head size, hidden neurons per MLP); two blocks each
GEOMETRY = {"gpt2": (2, 4, 32), "bert": (2, 4, 12), "vit": (2, 4, 12)} | dict.fromkeys(
    ("llama", "mistral", "qwen2"), (4, 4, 12)
)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_heads_and_neurons_are_found_from_the_structure(name):
    model = MODELS[name]()
    components = transformer_components(model)
    heads, head_dim, hidden = GEOMETRY[name]
    assert components.kinds == ("heads", "neurons") * 2
    assert components.sizes == (heads, hidden) * 2
    assert components.sites == ("input", "input") * 2 and components.groups == (head_dim, 1) * 2
    for module, size, group in zip(components.module_names, components.sizes, components.groups, strict=True):
        assert linear_features(model.get_submodule(module))[0] == size * group  # the projection's inputs
    assert len(transformer_components(model, neurons=False)) == 2 * heads
    assert len(transformer_components(model, heads=False)) == 2 * hidden


def _input_means(model: nn.Module, modules: tuple[str, ...], batch: dict) -> dict[str, torch.Tensor]:
    """Each module's mean input feature over inputs and positions, recorded by a plain hook."""
    means, handles = {}, []
    for module in modules:

        def record(_, args, module=module):
            means[module] = args[0].detach().reshape(-1, args[0].shape[-1]).double().mean(0)

        handles.append(model.get_submodule(module).register_forward_pre_hook(record))
    with torch.no_grad():
        model(**batch)
    for handle in handles:
        handle.remove()
    return means


def _edited_output(model, module, columns, mean, batch, targets):
    """The margin with input features ``columns`` of ``module`` ablated, by editing a copy's weights."""
    edited = copy.deepcopy(model)
    layer = edited.get_submodule(module)
    with torch.no_grad():
        weight = layer.weight if isinstance(layer, nn.Linear) else layer.weight.T  # Conv1D stores (in, out)
        if mean is not None:
            if layer.bias is None:  # LLaMA's projections have none: the mean needs one
                layer.bias = nn.Parameter(torch.zeros(weight.shape[0]))
            layer.bias += (weight[:, columns].double() @ mean[columns]).float()
        weight[:, columns] = 0
        return margins(edited(**batch), targets).double()


@pytest.mark.parametrize("ablation", ["zero", "mean"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_leave_one_out_of_every_unit_equals_editing_the_weights(name, ablation):
    model = MODELS[name]()
    batch, targets = _inputs(name)
    components = transformer_components(model)
    means = None
    if ablation == "mean":
        means = _input_means(model, components.module_names, batch)
        components = components.with_means(compattr.components.component_means(model, components, batch))
    attributor = compattr.ComponentAttributor(model, components, batch, targets)
    loo = attributor.attribute("loo")
    with torch.no_grad():
        base = margins(model(**batch), targets).double()
    np.testing.assert_allclose(loo.intercept, base, rtol=1e-5, atol=1e-5)
    expected = []
    for module, size, group in zip(components.module_names, components.sizes, components.groups, strict=True):
        mean = None if means is None else means[module]
        for unit in range(size):
            columns = slice(unit * group, (unit + 1) * group)
            expected.append(_edited_output(model, module, columns, mean, batch, targets) - base)
    np.testing.assert_allclose(loo.coef, torch.stack(expected, 1).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_attribution_patching_of_heads_and_neurons_is_the_gradient_times_the_unit(name):
    """``atp`` (keep factors' gradients) against the input features' gradient times their values, by hand."""
    model = MODELS[name]()
    batch, targets = _inputs(name)
    components = transformer_components(model)
    atp = compattr.ComponentAttributor(model, components, batch, targets).attribute("atp")
    kept, handles = {}, []
    for module in components.module_names:

        def keep(_, args, module=module):
            args[0].retain_grad()
            kept[module] = args[0]

        handles.append(model.get_submodule(module).register_forward_pre_hook(keep))
    margins(model(**batch), targets).sum().backward()
    for handle in handles:
        handle.remove()
    expected = []
    for module, size, group in zip(components.module_names, components.sizes, components.groups, strict=True):
        x = kept[module]
        expected.append(-(x.grad * x).sum(1).reshape(len(x), size, group).sum(-1))
    np.testing.assert_allclose(atp.coef, torch.cat(expected, 1).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_sampling_and_fitting_take_a_model_output_and_a_tokenizers_batch():
    model = _gpt2()
    batch, targets = _inputs("gpt2", 4)
    seen = []

    def last_logit(outputs, tokens):
        seen.append(type(outputs).__name__)
        return outputs.logits[:, -1].gather(1, tokens[:, None]).squeeze(1)

    attributor = compattr.ComponentAttributor(model, "transformer", batch, targets, output=last_logit)
    attributor.sample(40, 0.1)
    heldout = attributor.sample(30, 0.1, keep=False)
    assert set(seen) == {"CausalLMOutputWithCrossAttentions"}
    assert np.isfinite(compattr.lds(attributor.attribute("ridge"), heldout))
    # the named "logit" output reads the same logits at the last position: the same samples
    named = compattr.ComponentAttributor(model, "transformer", batch, targets, output="logit")
    np.testing.assert_allclose(named.sample(40, 0.1).outputs, attributor.samples_.outputs[:40], rtol=1e-6)
    # a position per input: (position, token) rows
    rows = torch.stack([torch.tensor([2, 3, 4, 5]), targets], 1)
    at = compattr.ComponentAttributor(model, "transformer", batch, rows, output="logit")
    with torch.no_grad():
        logits = model(**batch).logits
    expected = logits[torch.arange(4), rows[:, 0], rows[:, 1]]
    np.testing.assert_allclose(at.attribute("loo").intercept, expected.numpy(), rtol=1e-5)


def test_a_dataloader_of_tokenizer_batches_with_labels():
    model = _bert()
    batch, targets = _inputs("bert", 6)
    loader = [{**{k: v[i : i + 2] for k, v in batch.items()}, "labels": targets[i : i + 2]} for i in range(0, 6, 2)]
    attributor = compattr.ComponentAttributor(model, "heads", loader)
    assert torch.equal(attributor.targets, targets) and set(attributor.inputs) == {"input_ids", "attention_mask"}
    np.testing.assert_allclose(
        attributor.attribute("loo").intercept,
        margins(model(**batch), targets).detach().numpy(),
        rtol=1e-5,
        atol=1e-6,
    )


def _swin() -> nn.Module:
    """torchvision's Swin at toy size: two stages of one block, 16- and 32-wide tokens."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer([4, 4], 16, [1, 1], [1, 2], [2, 2], num_classes=4).eval()


def _convnext() -> nn.Module:
    """torchvision's ConvNeXt at toy size: two stages of one block, 16 and 32 channels."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=4).eval()


def test_torchvision_swin_neurons_and_convnext_neurons_equal_editing_the_weights():
    for build in (_swin, _convnext):
        model = build()
        neurons = transformer_components(model, heads=False)
        first = neurons.module_names[0]
        assert neurons.sizes == (4 * 16, 4 * 32)  # an MLP of 4x the width per block
        images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
        units = module_components(model, [{"module": first, "kind": "neurons", "site": "input"}])
        single = np.zeros((2, len(units)), dtype=bool)
        single[0, 0] = single[1, 37] = True  # two single-unit ablations
        ablated = compattr.ComponentAttributor(model, units, images, labels).evaluate(single)
        for row, unit in enumerate((0, 37)):
            edited = copy.deepcopy(model)
            with torch.no_grad():
                edited.get_submodule(first).weight[:, unit] = 0
                expected = margins(edited(images), labels)
            np.testing.assert_allclose(ablated[row], expected.numpy(), rtol=1e-4, atol=1e-4)


def test_what_the_structure_does_not_settle_is_an_error_naming_the_module():
    with pytest.raises(ValueError, match="structure gives no heads.*module_components"):
        transformer_components(_convnext())
    model = _gpt2()
    with pytest.raises(ValueError, match=r"'transformer.h.0.attn.c_proj'.*8 features; head_dim 3"):
        module_components(model, [{"module": "transformer.h.0.attn.c_proj", "kind": "heads", "head_dim": 3}])
    with pytest.raises(ValueError, match="no module 'transformer.h.9'"):
        module_components(model, ["transformer.h.9"])
    with pytest.raises(ValueError, match=r"'transformer.h.0.ln_1' is a LayerNorm"):
        module_components(model, ["transformer.h.0.ln_1"])
    # torchvision's Swin calls its projections as functions: a head there cannot be masked, and says so
    swin = _swin()
    heads = transformer_components(swin, neurons=False)
    with pytest.raises(ValueError, match=r"'features.1.0.attn.proj'.*never called"):
        compattr.ComponentAttributor(swin, heads, torch.randn(1, 3, 32, 32), torch.tensor([0])).attribute("loo")


def test_bad_outputs_are_named_with_the_inputs():
    model = _gpt2()
    batch, targets = _inputs("gpt2", 3)
    wide = compattr.ComponentAttributor(model, "heads", batch, targets, output=lambda out, t: out.logits[:, -1])
    with pytest.raises(ValueError, match=r"returned shape \(6, 13\) for a batch of 6 samples"):
        wide.sample(2)

    def nan_on_input_1(out, t):
        values = out.logits[:, -1, 0].clone()
        values[1::3] = float("nan")
        return values

    attributor = compattr.ComponentAttributor(model, "heads", batch, targets, output=nan_on_input_1, input_ids="abc")
    with pytest.raises(FloatingPointError, match=r"on 1 inputs.*\['b'\]"):
        attributor.sample(4)
    dead = _bert()
    with torch.no_grad():
        dead.classifier.weight.zero_()
    batch, targets = _inputs("bert", 3)
    with pytest.warns(UserWarning, match=r"3 inputs' outputs never change"):
        compattr.ComponentAttributor(dead, "transformer", batch, targets).sample(5)


def test_the_readme_language_model_example_runs():
    """The README's Hugging Face example, as written, on a random-weight GPT-2 (its own lines build the model)."""
    block = re.search(r"<!-- language model -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no python block after <!-- language model -->"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 10
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.components[0] == "transformer.h.0.attn.c_proj:head0" and result.coef.shape[0] == 4
    assert -1 <= namespace["score"] <= 1


def test_the_workflow_trains_saves_and_loads_a_hugging_face_gpt2_on_the_text(tmp_path):
    """config/text_gpt2.yaml's model path: build, train on next characters, save, load, find its units."""
    from compattr.checkpoints import load_checkpoint, save_checkpoint
    from compattr.data import load_dataset
    from compattr.models import accuracy, build_model, train_classifier

    train, test = load_dataset("text", test_fraction=0.1, context=8, stride=256, num_classes=20)
    arch = {"name": "hf_gpt2", "context": 8, "layers": 1, "heads": 2, "hidden": 8, "mlp": 16}
    model = build_model(arch, num_classes=20, in_channels=8, seed=0)
    again = build_model(arch, num_classes=20, in_channels=8, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    losses = train_classifier(model, train, epochs=2, batch_size=64, lr=0.05, weight_decay=0.0, seed=0)
    assert losses[1] < losses[0] and 0 <= accuracy(model, test) <= 1
    save_checkpoint(
        tmp_path / "gpt2.pt", model, arch, num_classes=20, in_channels=8, components={"kind": "transformer"}
    )
    loaded, components = load_checkpoint(tmp_path / "gpt2.pt")
    assert components.names[:2] == ["transformer.h.0.attn.c_proj:head0", "transformer.h.0.attn.c_proj:head1"]
    assert len(components) == 2 + 16
    tokens = test.images[:3]
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits)
