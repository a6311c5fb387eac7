"""Finding a model's components by its structure: convolution filters, attention heads, MLP neurons.

- :func:`conv_components`: every filter of every ``Conv2d`` (squeeze-and-excitation gates left out).
- :func:`transformer_components`: every attention head and every MLP neuron. Heads are found from
  the attention modules' head geometry (an ``nn.MultiheadAttention``, or a module carrying a head
  count or head size, as Hugging Face's and torchvision's attention modules do) and sit on the
  input of the module's output projection; neurons are the hidden units between an MLP's up and
  down projections (two linear layers ``d -> h -> d`` in a row, or a gated triple ``gate, up ->
  down``), on the down projection's input. Linear layers are ``nn.Linear`` or Hugging Face's
  ``Conv1D``.
- :func:`module_components`: the components of modules named by hand, by path or by spec.

Anything the structure does not settle is an error naming the module and the spec that names
its components by hand (docs/units.md lists what is found for which architectures).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from compattr.components import KINDS, ComponentSet

__all__ = ["conv_components", "transformer_components", "module_components", "linear_features"]

#: Attributes that carry an attention module's head count and head size.
HEAD_COUNT = ("num_heads", "num_attention_heads", "n_head", "n_heads")
HEAD_SIZE = ("head_dim", "attention_head_size", "head_size")
#: Roles of an attention output projection: the child (or a sibling's child) that takes the heads side by side.
OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "proj", "dense", "out_lin", "wo")


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a linear layer (``nn.Linear``, or Hugging Face's ``Conv1D``); else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight, nf = getattr(module, "weight", None), getattr(module, "nf", None)
    if isinstance(weight, Tensor) and weight.ndim == 2 and isinstance(nf, int) and weight.shape[1] == nf:
        return weight.shape[0], nf  # Conv1D: y = x @ weight + bias, weight (in, out)
    return None


def _is_squeeze_excitation(module: nn.Module) -> bool:
    # a model built from torchvision's gates has imported them; importing torchvision here costs a second
    misc = sys.modules.get("torchvision.ops.misc")
    return misc is not None and isinstance(module, misc.SqueezeExcitation)


def conv_components(model: nn.Module, *, include_shortcuts: bool = True) -> ComponentSet:
    """Every output channel of every ``nn.Conv2d`` of ``model``, in module order.

    The convolutions of squeeze-and-excitation gates (torchvision's ``SqueezeExcitation``) are
    left out: their outputs are the logits of a channel gate, not feature maps, and zeroing
    one would halve a channel (``hardsigmoid(0) = 0.5``) rather than remove anything.

    Parameters
    ----------
    include_shortcuts : bool, default=True
        Whether to count the 1x1 projection convolutions of residual shortcuts
        (modules under a ``downsample`` path). COAR's ResNet-50 count (22,720)
        leaves them out.
    """
    gates = [name for name, module in model.named_modules() if _is_squeeze_excitation(module)]
    names, sizes = [], []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if not include_shortcuts and "downsample" in name.split("."):
                continue
            if any(name.startswith(f"{gate}.") for gate in gates):
                continue
            names.append(name)
            sizes.append(module.out_channels)
    if not names:
        raise ValueError("the model has no Conv2d modules to ablate")
    return ComponentSet(tuple(names), tuple(sizes))


def _int_attribute(module: Any, names: Sequence[str]) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _heads_spec(name: str, head_dim: int) -> str:
    return f"module_components(model, [{{'module': {name!r}, 'kind': 'heads', 'head_dim': {head_dim}}}])"


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules holding attention heads: ``nn.MultiheadAttention``, and modules with a head geometry and linear children.

    The outermost such module of each path is kept (its descendants are its own parts).
    """
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{outer}.") for outer, _ in found):
            continue
        if isinstance(module, nn.MultiheadAttention):
            found.append((name, module))
            continue
        geometry = _int_attribute(module, HEAD_COUNT) or _int_attribute(module, HEAD_SIZE)
        if geometry and any(linear_features(child) for child in module.children()):
            found.append((name, module))
    return found


def _output_projection(model: nn.Module, name: str, module: nn.Module) -> tuple[str, tuple[int, int]]:
    """An attention module's output projection: a child in a projection role, or a sibling's (BERT's)."""
    parent_name = name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    places = [(name, module)] + [
        (f"{parent_name}.{child}" if parent_name else child, sibling)
        for child, sibling in parent.named_children()
        if sibling is not module
    ]
    for place, holder in places:
        for role in OUTPUT_PROJECTIONS:
            child = getattr(holder, role, None)
            shape = linear_features(child) if isinstance(child, nn.Module) else None
            if shape is not None:
                return f"{place}.{role}", shape
    raise ValueError(
        f"attention module {name!r} ({type(module).__name__}) has heads, but no output projection was found among "
        f"its children or its siblings' children in the roles {list(OUTPUT_PROJECTIONS)}: name its output "
        f"projection by hand, e.g. {_heads_spec(f'{name}.<projection>', 64)}"
    )


def _head_geometry(model: nn.Module, name: str, module: nn.Module, width: int) -> tuple[int, int]:
    """``(heads, head_size)`` of an attention module whose output projection takes ``width`` features."""
    config = getattr(model, "config", None)
    count = _int_attribute(module, HEAD_COUNT) or _int_attribute(config, ("num_attention_heads", "n_head"))
    size = _int_attribute(module, HEAD_SIZE)
    if size is None and count is not None and width % count == 0:
        size = width // count
    if size is None or width % size or (count is not None and count * size != width):
        raise ValueError(
            f"attention module {name!r} ({type(module).__name__}): {count} heads of size {size} do not make the "
            f"{width} input features of its output projection: name its heads by hand, "
            f"e.g. {_heads_spec(name + '.<projection>', size or 64)}"
        )
    return width // size, size


def _mlp_neurons(model: nn.Module, skip: set[str]) -> list[tuple[str, int]]:
    """MLP down projections and their hidden sizes: ``d -> h -> d`` pairs and ``gate, up -> down`` triples in a row.

    ``skip``: paths whose linear layers are not an MLP's (those inside attention modules).
    """
    linears = [
        (name, shape)
        for name, module in model.named_modules()
        if (shape := linear_features(module)) is not None
        and not any(name == s or name.startswith(f"{s}.") for s in skip)
    ]
    found, i = [], 0
    while i < len(linears) - 1:
        (_, (a_in, a_out)), (b, (b_in, b_out)) = linears[i], linears[i + 1]
        if i + 2 < len(linears):
            c, (c_in, c_out) = linears[i + 2]
            if a_in == b_in == c_out and a_out == b_out == c_in:  # gate, up -> down
                found.append((c, c_in))
                i += 3
                continue
        if a_out == b_in and b_out == a_in and a_out != a_in:  # up -> down
            found.append((b, b_in))
            i += 2
            continue
        i += 1
    return found


def transformer_components(model: nn.Module, *, heads: bool = True, neurons: bool = True) -> ComponentSet:
    """Every attention head and every MLP neuron of a transformer, in module order (see the module's docs).

    Heads of an ``nn.MultiheadAttention`` are masked inside it; every other attention module's
    heads are ``head_size`` consecutive input features of its output projection (Hugging Face's
    GPT-2, LLaMA-style decoders, whose heads are the query heads under grouped-query attention,
    BERT-style encoders, ViT). Neurons are the down projections' input features. Asking for
    heads (or neurons) in a model where none are found is an error, never a subset in silence.
    """
    attention = _attention_modules(model)
    sites: list[tuple[str, int, str, str, int]] = []  # (module, size, kind, site, group)
    skip = set()
    for name, module in attention:
        skip.add(name)
        if isinstance(module, nn.MultiheadAttention):
            if heads:
                sites.append((name, module.num_heads, "heads", "output", 1))
            continue
        projection, (width, _) = _output_projection(model, name, module)
        skip.add(projection)
        if heads:
            count, size = _head_geometry(model, name, module, width)
            sites.append((projection, count, "heads", "input", size))
    if neurons:
        sites += [(name, size, "neurons", "input", 1) for name, size in _mlp_neurons(model, skip)]
    kinds = {kind for _, _, kind, _, _ in sites}
    wanted = [kind for kind, asked in (("heads", heads), ("neurons", neurons)) if asked]
    missing = [kind for kind in wanted if kind not in kinds]
    if missing:
        found = ", ".join(f"{sum(1 for s in sites if s[2] == k)} modules of {k}" for k in sorted(kinds)) or "nothing"
        raise ValueError(
            f"the model's structure gives no {' and no '.join(missing)} (found {found}): heads come from attention "
            f"modules with a head count or size ({list(HEAD_COUNT + HEAD_SIZE)}) or nn.MultiheadAttention, neurons "
            "from linear layers d -> h -> d (or gate, up -> down) in a row; name them by hand with "
            "module_components(model, [{'module': ..., 'kind': 'heads', 'head_dim': ...}, "
            "{'module': ..., 'kind': 'neurons', 'site': 'input'}])"
        )
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    sites.sort(key=lambda site: order[site[0]])
    names, sizes, kinds_, places, groups = zip(*sites, strict=True)
    return ComponentSet(names, sizes, kinds_, sites=places, groups=groups)


def module_components(model: nn.Module, specs: Sequence[str | Mapping[str, Any]]) -> ComponentSet:
    """The components of modules named by hand, in the order given.

    A spec is a dotted module path (as ``model.named_modules()`` gives them): a ``Conv2d``'s
    filters, a linear layer's output neurons, an ``nn.MultiheadAttention``'s heads. Or a
    mapping: ``{"module": path, "kind": "heads", "head_dim": 64}`` (the heads side by side on
    an output projection's input), ``{"module": path, "kind": "neurons", "site": "input"}``
    (the input features of a down projection), ``{"module": path, "kind": "neurons"}`` (its
    output features).
    """
    if not specs:
        raise ValueError("no modules named: give at least one")
    modules = dict(model.named_modules())
    sites = [_site(model, modules, spec) for spec in specs]
    names = [site[0] for site in sites]
    if len(set(names)) != len(names):
        raise ValueError(f"module names repeat: {names}")
    names, sizes, kinds, places, groups = zip(*sites, strict=True)
    return ComponentSet(names, sizes, kinds, sites=places, groups=groups)


def _site(
    model: nn.Module, modules: dict[str, nn.Module], spec: str | Mapping[str, Any]
) -> tuple[str, int, str, str, int]:
    """One spec as ``(module, size, kind, site, group)``; errors name the module, the axis and the sizes."""
    if isinstance(spec, str):
        spec = {"module": spec}
    unknown = sorted(set(spec) - {"module", "kind", "site", "head_dim"})
    if unknown or "module" not in spec:
        raise ValueError(f"a component spec takes module, kind, site and head_dim; got {dict(spec)}")
    name = spec["module"]
    if name not in modules:
        raise ValueError(f"the model has no module {name!r}; its modules: {[n for n in modules if n][:20]}")
    module, kind, site = modules[name], spec.get("kind"), spec.get("site")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"module {name!r}: kind must be one of {list(KINDS)}, got {kind!r}")
    shape = linear_features(module)
    if isinstance(module, nn.MultiheadAttention) and kind in (None, "heads") and site in (None, "output"):
        return name, module.num_heads, "heads", "output", 1
    if isinstance(module, nn.Conv2d) and kind in (None, "channels") and site in (None, "output"):
        return name, module.out_channels, "channels", "output", 1
    if shape is not None and kind == "heads":
        head_dim = spec.get("head_dim")
        if not isinstance(head_dim, int) or head_dim < 1 or shape[0] % head_dim:
            raise ValueError(
                f"module {name!r}: heads are head_dim consecutive features of its input's last axis, which has "
                f"{shape[0]} features; head_dim {head_dim!r} does not divide them"
            )
        if site not in (None, "input"):
            raise ValueError(f"module {name!r}: heads live on an output projection's input, not its {site}")
        return name, shape[0] // head_dim, "heads", "input", head_dim
    if shape is not None and kind in (None, "neurons"):
        if site == "input":
            return name, shape[0], "neurons", "input", 1
        if site in (None, "output"):
            return name, shape[1], "neurons", "output", 1
    raise ValueError(
        f"module {name!r} is a {type(module).__name__}: components are the output channels of a Conv2d, the heads of "
        "an nn.MultiheadAttention, or of a linear layer (nn.Linear, Conv1D) its output neurons, its input neurons "
        f"(site 'input') or its input's heads (kind 'heads', head_dim); got kind {kind!r}, site {site!r}"
    )
