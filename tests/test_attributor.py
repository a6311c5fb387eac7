"""The library's front door: ComponentAttributor, Attribution, Samples and lds, on models a user brings."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import compattr
from compattr.attributor import Attribution, Samples
from compattr.baselines import first_order_prior
from compattr.units import unit_prior

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_quick_start_runs():
    """The README's library example, executed as written (a torchvision ResNet-18 with random weights)."""
    block = re.search(r"<!-- quick start -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no python block after <!-- quick start -->"
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 15
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert isinstance(result, Attribution) and result.coef.shape == (len(result.inputs), len(result.components))
    assert result.components[0] == "layer4.1.conv1:0"
    assert -1 <= compattr.lds(result, namespace["heldout"]) <= 1


def _mlp(relu: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 12), nn.ReLU() if relu else nn.Identity(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3)
    )


def _ablated_output(model: nn.Module, module: str, neuron: int, x: torch.Tensor, output) -> torch.Tensor:
    """The output with one neuron's output zeroed, by editing a copy's weights."""
    copy = _mlp()
    copy.load_state_dict(model.state_dict())
    layer = copy.get_submodule(module)
    with torch.no_grad():
        layer.weight[neuron] = 0
        layer.bias[neuron] = 0
        return output(copy(x), None)


def test_leave_one_out_on_an_mlp_with_a_custom_output_ablates_each_neuron():
    model = _mlp().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 5)

    def second_logit(outputs, targets):
        assert targets is None
        return outputs[:, 1]

    attributor = compattr.ComponentAttributor(model, ["0", "2"], x, output=second_logit, input_ids=list("abcdef"))
    result = attributor.attribute("loo")
    assert result.components[:2] == ("0:0", "0:1") and result.components[12] == "2:0"
    assert result.inputs == tuple("abcdef") and result.passes == 19
    base = second_logit(model.eval()(x), None).detach()
    model.train()
    for c, (module, neuron) in [(0, ("0", 0)), (5, ("0", 5)), (13, ("2", 1))]:
        expected = (_ablated_output(model, module, neuron, x, second_logit) - base).numpy()
        np.testing.assert_allclose(result.coef[:, c], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.intercept, base.numpy(), rtol=1e-6)
    # The user's model is untouched: still in training mode, same weights.
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_least_squares_recovers_the_exact_effects_when_they_add_up():
    """Ablating hidden neurons of a network linear after them: every effect adds, so COAR's least squares
    on more masks than components gives leave-one-out back, and so does ridge closely."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 10), nn.Linear(10, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    attributor = compattr.ComponentAttributor(model, ["0"], x, y, output="logit")
    attributor.sample(200, ablation_rate=0.3)
    heldout = attributor.sample(50, ablation_rate=0.3, keep=False)
    loo = attributor.attribute("loo")
    coar = attributor.attribute("coar")
    np.testing.assert_allclose(coar.coef, loo.coef, atol=1e-4)
    np.testing.assert_allclose(coar.intercept, loo.intercept, atol=1e-4)
    assert compattr.lds(coar, heldout) > 0.999
    assert compattr.lds(loo, heldout, per_input=True).min() > 0.999  # float32 outputs: near-ties may swap
    atp = attributor.attribute("atp")  # linear in the keep factors: first order is exact
    np.testing.assert_allclose(atp.coef, loo.coef, atol=1e-4)
    assert atp.passes == 3 and coar.passes == 200


def test_a_dataloader_of_pairs_gives_the_samples_of_the_tensors():
    model = _mlp()
    x, y = torch.randn(9, 5), torch.randint(0, 3, (9,))
    direct = compattr.ComponentAttributor(model, ["0"], x, y, seed=3).sample(20)
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    streamed = compattr.ComponentAttributor(model, ["0"], loader, seed=3).sample(20)
    np.testing.assert_array_equal(direct.masks, streamed.masks)
    np.testing.assert_allclose(direct.outputs, streamed.outputs, rtol=1e-6)


def test_samples_accumulate_from_fresh_streams_and_reproduce():
    model = _mlp()
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    attributor = compattr.ComponentAttributor(model, ["0", "2"], x, y, output="loss")
    first = attributor.sample(30, 0.2)
    second = attributor.sample(30, 0.2)
    assert not np.array_equal(first.masks, second.masks)
    assert len(attributor.samples_) == 60 and attributor.ablation_rate_ == 0.2
    again = compattr.ComponentAttributor(model, ["0", "2"], x, y, output="loss").sample(30, 0.2)
    np.testing.assert_array_equal(again.masks, first.masks)
    np.testing.assert_array_equal(again.outputs, first.outputs)
    merged = first + second
    assert isinstance(merged, Samples) and merged.outputs.shape == (60, 4)


def test_top_lists_each_inputs_largest_effects_by_name():
    result = Attribution(
        coef=np.array([[0.1, -3.0, 2.0], [0.0, 0.5, -0.2]]),
        intercept=np.zeros(2),
        components=("a:0", "a:1", "b:0"),
        inputs=("cat", "dog"),
        method="ridge",
        passes=10,
    )
    assert result.top(2) == {"cat": [("a:1", -3.0), ("b:0", 2.0)], "dog": [("a:1", 0.5), ("b:0", -0.2)]}


def test_gradient_prior_pays_for_its_prior_and_chooses_among_several():
    model = _mlp()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    attributor = compattr.ComponentAttributor(model, ["0", "2"], x, y)
    attributor.sample(80, 0.1)
    single = attributor.attribute("gradient_prior")
    several = attributor.attribute("gradient_prior", prior=["atp", "atp_mean"])
    assert single.passes == 80 + 3 and several.passes == 80 + 3 + 4


def test_priors_are_computed_once_per_point(monkeypatch):
    """A prior reused by several methods is computed once, and still paid by each."""
    import compattr.attributor as front

    calls = []
    original = front.unit_prior
    monkeypatch.setattr(front, "unit_prior", lambda *a, **k: calls.append(k["point"]) or original(*a, **k))
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    attributor = compattr.ComponentAttributor(_mlp(), ["0", "2"], x, y)
    attributor.sample(60, 0.1)
    first = attributor.attribute("atp_mean")
    again = attributor.attribute("gradient_prior", prior="atp_mean")
    assert calls == ["mean"] and again.passes == 60 + first.passes
    np.testing.assert_array_equal(attributor.attribute("atp_mean").coef, first.coef)
    attributor.sample(20, 0.2, keep=False)  # held-out samples at another rate do not move the kept rate
    attributor.attribute("atp_mean")
    assert calls == ["mean"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda m, x, y: compattr.ComponentAttributor(m, ["9"], x, y), "no module '9'"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["1"], x, y), "'1' is a ReLU"),
        (lambda m, x, y: compattr.ComponentAttributor(m, "filters", x, y), "components must be"),
        (lambda m, x, y: compattr.ComponentAttributor(m, "heads", x, y), "structure gives no heads"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x), "needs targets"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y, output="prob"), "output must be one of"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y[:2]), "inputs but 2 targets"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y).attribute("ridge"), "call sample"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y).attribute("shapley"), "unknown method"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y).attribute("atp_mean"), "call sample"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y).sample(5, 1.5), "ablation_rate"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y, input_ids="abca"), r"\['a'\] appear more"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y + 3).sample(2), "targets out of range"),
        (lambda m, x, y: compattr.ComponentAttributor(m, ["0"], x, y).evaluate(np.full((2, 12), 0.5)), "boolean"),
    ],
)
def test_bad_inputs_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build(_mlp(), torch.randn(4, 5), torch.randint(0, 3, (4,)))


def test_samples_name_their_components_and_inputs_and_every_use_checks_them():
    x, y = torch.randn(4, 5), torch.randint(0, 3, (4,))
    first = compattr.ComponentAttributor(_mlp(), ["0"], x, y)
    other = compattr.ComponentAttributor(_mlp(), [{"module": "2", "site": "input"}], x, y)
    assert len(first.components) == len(other.components) == 12  # the same width, other units
    heldout = other.sample(40, 0.1, keep=False)
    assert heldout.components == tuple(other.components.names) and heldout.ablation_rate == 0.1
    assert heldout.inputs == (0, 1, 2, 3)
    first.sample(40, 0.1)
    fitted = first.attribute("ridge")
    with pytest.raises(ValueError, match="drawn over other components than the attribution's: column 0 is '2:in0'"):
        compattr.lds(fitted, heldout)
    with pytest.raises(ValueError, match="drawn over other components than this attributor's"):
        first.attribute("ridge", samples=heldout)
    narrow = Samples(np.zeros((3, 5), bool), np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="the samples have 5 components \\(columns\\) where this attributor"):
        first.attribute("ridge", samples=narrow)
    with pytest.raises(ValueError, match="other inputs"):
        compattr.lds(fitted, Samples(heldout.masks, heldout.outputs, None, ("a", "b", "c", "d")))
    assert -1 <= compattr.lds(fitted, first.sample(40, 0.1, keep=False)) <= 1  # its own units: scored


def test_one_rate_per_kept_samples():
    attributor = compattr.ComponentAttributor(_mlp(), ["0"], torch.randn(3, 5), torch.tensor([0, 1, 2]))
    attributor.sample(10, 0.1)
    attributor.sample(10, 0.3, keep=False)  # held out at another rate: fine
    with pytest.raises(ValueError, match="differs from the kept samples"):
        attributor.sample(10, 0.3)


def test_the_exact_prior_at_the_masks_mean_is_first_order_prior_there():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 3)
    )
    model.eval()
    x, y = torch.randn(5, 1, 5, 5), torch.randint(0, 3, (5,))
    attributor = compattr.ComponentAttributor(model, "conv", x, y)
    attributor.sample(30, 0.2)
    result = attributor.attribute("atp_relu_mean")
    expected, _ = first_order_prior(
        model, attributor.components, x, y, point="mean", ablation_rate=0.2, relu="exact", batch_size=1
    )
    np.testing.assert_allclose(result.coef, expected, rtol=1e-5, atol=1e-6)
    assert result.passes == 4


def test_attribution_patching_with_its_top_32_measured_is_leave_one_out_there():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 3)).eval()
    attributor = compattr.ComponentAttributor(model, ["0"], torch.randn(4, 5), torch.tensor([0, 1, 2, 0]))
    atp, loo = attributor.attribute("atp"), attributor.attribute("loo")
    result = attributor.attribute("atp_top_32")
    top = np.argsort(-np.abs(atp.coef).mean(0), kind="stable")[:32]
    np.testing.assert_allclose(result.coef[:, top], loo.coef[:, top], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.delete(result.coef, top, axis=1), np.delete(atp.coef, top, axis=1))
    assert result.passes == 3 + 32 + 1


def test_the_margin_prior_from_the_masks_mean_is_the_librarys_at_the_sampled_rate():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 40), nn.ReLU(), nn.Linear(40, 4)).eval()
    x, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 0, 1])
    attributor = compattr.ComponentAttributor(model, ["0"], x, y)
    with pytest.raises(ValueError, match="call sample"):
        attributor.attribute("atp_margin_mean_2")
    attributor.sample(30, 0.2)
    result = attributor.attribute("atp_margin_mean_2")
    expected, intercept, passes = unit_prior(
        model, attributor.components, x, y, point="mean", margin="simulated", competitors=2, ablation_rate=0.2
    )
    np.testing.assert_allclose(result.coef, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.intercept, intercept, rtol=1e-5, atol=1e-6)
    assert result.passes == passes == 1 + 2 * 2
    # the two closest classes' maximum is not the margin's gradient there
    assert np.abs(result.coef - attributor.attribute("atp_mean").coef).max() > 1e-3
