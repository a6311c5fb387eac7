"""Ablatable components of a network, and copies of it whose forward pass ablates them per sample.

A *component* is a slice of one module's output or input (its *site*) along one axis, of one of
three kinds:

- ``channels``: an output channel (axis 1) of a convolution, a filter; named ``module.path:channel``.
- ``neurons``: a feature on the last axis of ``(batch, features)`` or ``(batch, tokens, features)``
  activations. On a module's output (a ``Linear`` layer's output feature), named
  ``module.path:neuron``; on its input (an MLP's hidden neuron, one input feature of its down
  projection), named ``module.path:in<neuron>``.
- ``heads``: one attention head. Of an ``nn.MultiheadAttention``, its contribution removed before
  the output projection; on the input of any attention output projection (a ``Linear``, Hugging
  Face's ``Conv1D``), ``group`` (the head size) consecutive input features. Named
  ``module.path:head<h>``.

Components are numbered in module order. Ablating one replaces its slice by zero (or by its mean,
:func:`component_means`) for the samples whose mask asks so: for a bias-free convolution followed by
BatchNorm this equals zeroing the filter's weights (the reference ablation of COAR, Shah et al. 2024);
for an output neuron, zeroing its row of the weight and its bias; for a head or an input neuron,
zeroing its columns of the projection's weight. Input sites are masked by a forward pre-hook on the
module of a copy of the model; the user's model is never changed. Each masked module checks on
every forward pass that its component axis has the size the set gives it, and names the module
when it does not.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compattr.batches import Batch, batch_len, call, take, to_device

__all__ = [
    "KINDS",
    "ComponentSet",
    "AblatableNetwork",
    "component_means",
    "zero_filters",
]

#: Component kinds: what a module's components are, and the axis of its output they live on.
KINDS = ("channels", "neurons", "heads")
#: Where on a module its components live: its output, or its (first) input.
SITES = ("output", "input")


@dataclass(frozen=True)
class ComponentSet:
    """An ordered set of ablatable units (filters, neurons, heads) of some modules of one model.

    Attributes
    ----------
    module_names : tuple of str
        Dotted paths of the modules, in component order.
    sizes : tuple of int
        Number of components of each module.
    kinds : tuple of str, optional
        Each module's kind (:data:`KINDS`); default ``channels`` for every module.
    sites : tuple of str, optional
        Each module's site (:data:`SITES`): its output (default) or its input.
    groups : tuple of int, optional
        Each module's features per unit on the unit axis (default 1; a head's size for heads
        on an output projection's input).
    means : dict of str to Tensor, optional
        Mean ablation: per module, the value an ablated unit takes instead of zero (its mean,
        :func:`component_means`): ``(size,)`` for channels and neurons, ``(heads,
        head_dim)`` for heads. Default: zero ablation.
    """

    module_names: tuple[str, ...]
    sizes: tuple[int, ...]
    kinds: tuple[str, ...] | None = None
    means: dict[str, Tensor] | None = field(default=None, compare=False, repr=False)
    sites: tuple[str, ...] | None = None
    groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.module_names)
        kinds = tuple(self.kinds) if self.kinds is not None else ("channels",) * n
        sites = tuple(self.sites) if self.sites is not None else ("output",) * n
        groups = tuple(int(g) for g in self.groups) if self.groups is not None else (1,) * n
        object.__setattr__(self, "kinds", kinds)
        object.__setattr__(self, "sites", sites)
        object.__setattr__(self, "groups", groups)
        if not n == len(self.sizes) == len(kinds) == len(sites) == len(groups):
            raise ValueError(
                f"{n} module names, {len(self.sizes)} sizes, {len(kinds)} kinds, {len(sites)} sites and "
                f"{len(groups)} groups: give one of each per module"
            )
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown component kinds {unknown}; known: {list(KINDS)}")
        unknown = sorted(set(sites) - set(SITES))
        if unknown:
            raise ValueError(f"unknown component sites {unknown}; known: {list(SITES)}")
        for name, kind, site, group in zip(self.module_names, kinds, sites, groups, strict=True):
            if group < 1 or (group > 1 and (kind, site) != ("heads", "input")):
                raise ValueError(
                    f"module {name!r}: a group of {group} features per unit is for heads on a projection's input only"
                )
            if site == "input" and kind == "channels":
                raise ValueError(f"module {name!r}: channels live on a convolution's output, not on an input")
        if self.means is not None and set(self.means) != set(self.module_names):
            raise ValueError(f"means are given for {sorted(self.means)}, not for every module of {self.module_names}")

    @property
    def ablation(self) -> str:
        """How a component is ablated: ``zero``, or ``mean`` (replaced by its mean output)."""
        return "zero" if self.means is None else "mean"

    def with_means(self, means: dict[str, Tensor] | None) -> ComponentSet:
        """The same components, ablated to ``means`` (:func:`component_means`; None: to zero)."""
        return replace(self, means=means)

    def __len__(self) -> int:
        return sum(self.sizes)

    @property
    def names(self) -> list[str]:
        """Stable component names: ``module.path:channel``, ``module.path:neuron``, ``module.path:head<h>``."""
        prefix = {"heads": "head", "neurons": "", "channels": ""}
        return [
            f"{m}:{'in' if kind == 'neurons' and site == 'input' else prefix[kind]}{c}"
            for m, n, kind, site in zip(self.module_names, self.sizes, self.kinds, self.sites, strict=True)
            for c in range(n)
        ]

    @property
    def offsets(self) -> list[int]:
        """Index of each module's first component."""
        out, total = [], 0
        for n in self.sizes:
            out.append(total)
            total += n
        return out

    def ablatable(self, model: nn.Module) -> AblatableNetwork:
        """A copy of ``model`` whose forward takes per-sample keep masks over these components."""
        return AblatableNetwork(model, self)


class _KeepSlot:
    """The keep mask of the forward pass under way, shared by the gates of one :class:`AblatableNetwork`.

    A plain attribute rather than a buffer: the mask is set and cleared inside
    ``AblatableNetwork.forward``, so a compiled forward takes it as an input.
    """

    keep: Tensor | None = None
    #: Offsets of the input gates that ran in the forward pass under way (see ``AblatableNetwork.forward``).
    called: set[int] = set()


class _Gate(nn.Module):
    """A module that masks components ``offset : offset + size``, read from a shared slot.

    ``mean`` (None: zero ablation) is what an ablated unit's output becomes. With ``recording``
    set, each forward pass adds its units' outputs (before masking) to ``total`` and ``count``.
    """

    def __init__(self, slot: _KeepSlot, offset: int, size: int, mean: Tensor | None = None) -> None:
        super().__init__()
        self.slot, self.offset, self.size = slot, offset, size
        self.register_buffer("mean", None if mean is None else mean.detach().clone(), persistent=False)
        self.recording, self.total, self.count = False, None, 0

    def _grouped(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` (batch, channels, ...) as (masks, samples per mask, channels, ...), and the keep (masks, size)."""
        keep = self.slot.keep[:, self.offset : self.offset + self.size]
        return x.unflatten(0, (len(keep), -1)), keep

    def _record(self, units: Tensor) -> None:
        """Add ``units`` (positions, unit, ...) to the running total (callers check ``recording`` first)."""
        total = units.detach().double().sum(0)
        self.total = total if self.total is None else self.total + total
        self.count += len(units)


class _MaskedOutput(_Gate):
    """A module whose output channels (axis 1) or neurons (last axis) are multiplied by its slice of the keep mask."""

    def __init__(
        self, module: nn.Module, slot: _KeepSlot, offset: int, size: int, name: str, kind: str, mean: Tensor | None
    ) -> None:
        super().__init__(slot, offset, size, mean)
        self.module, self.name, self.kind = module, name, kind

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        output = self.module(*args, **kwargs)
        if not isinstance(output, Tensor):
            raise TypeError(
                f"component module {self.name!r} ({type(self.module).__name__}) returns a "
                f"{type(output).__name__}, not a tensor: its {self.kind} cannot be masked on its output "
                "(attention modules: their heads are components of kind 'heads')"
            )
        axis = 1 if self.kind == "channels" else output.ndim - 1
        if output.ndim < 2 or output.shape[axis] != self.size:
            raise ValueError(
                f"component module {self.name!r}: the component set gives it {self.size} {self.kind} on "
                f"axis {axis} of its output, but its output has shape {tuple(output.shape)}"
            )
        if self.recording:  # never in the sampling path: the reshape copies the activations
            self._record(output.movedim(axis, -1).reshape(-1, self.size))
        grouped, keep = self._grouped(output)
        ones = (1,) * (output.ndim - 2)
        if self.kind == "channels":  # (masks, 1, channels, 1, ...)
            factor = keep.reshape(len(keep), 1, self.size, *ones)
        else:  # (masks, 1, ..., neurons)
            factor = keep.reshape(len(keep), 1, *ones, self.size)
        factor = factor.to(output.dtype)
        if self.mean is None:
            return (grouped * factor).flatten(0, 1)
        mean = self.mean.to(output.dtype)
        mean = mean.reshape(self.size, *ones) if self.kind == "channels" else mean
        return (mean + (grouped - mean) * factor).flatten(0, 1)


class _MaskedInput(_Gate):
    """Masks a module's (first) input on its last axis, ``group`` features per unit, by a forward pre-hook.

    The module stays where it is in the copy: a head is ``group`` consecutive input features
    of an attention output projection, an MLP neuron one input feature of its down projection.
    """

    def __init__(
        self,
        module: nn.Module,
        slot: _KeepSlot,
        offset: int,
        size: int,
        name: str,
        kind: str,
        group: int,
        mean: Tensor | None,
    ) -> None:
        device = next(module.parameters(), torch.empty(0)).device
        super().__init__(slot, offset, size, None if mean is None else mean.reshape(size * group).to(device))
        self.name, self.kind, self.group = name, kind, group
        module.register_forward_pre_hook(self._mask)

    def _mask(self, module: nn.Module, args: tuple) -> tuple:
        if not args or not isinstance(args[0], Tensor):
            raise ValueError(
                f"component module {self.name!r} ({type(module).__name__}) was called without a tensor as its "
                "first positional argument: its input cannot be masked"
            )
        x, width = args[0], self.size * self.group
        if x.ndim < 2 or x.shape[-1] != width:
            per_unit = f" of {self.group} features" if self.group > 1 else ""
            raise ValueError(
                f"component module {self.name!r}: the component set gives its input {self.size} {self.kind}"
                f"{per_unit} on the last axis ({width} features), but its input has shape {tuple(x.shape)}"
            )
        self.slot.called.add(self.offset)
        if self.recording:
            units = x.reshape(-1, self.size, self.group) if self.kind == "heads" else x.reshape(-1, self.size)
            self._record(units)
        grouped, keep = self._grouped(x)
        factor = keep.repeat_interleave(self.group, dim=1) if self.group > 1 else keep
        factor = factor.reshape(len(keep), 1, *(1,) * (x.ndim - 2), width).to(x.dtype)
        if self.mean is None:
            masked = grouped * factor
        else:
            mean = self.mean.to(x.dtype)
            masked = mean + (grouped - mean) * factor
        return (masked.flatten(0, 1), *args[1:])


class _MaskedAttention(_Gate):
    """An ``nn.MultiheadAttention`` whose heads are multiplied by the keep mask before the output projection.

    The heads' outputs are computed from the module's own input projection by
    :func:`torch.nn.functional.scaled_dot_product_attention`, masked per sample and head,
    then projected by the module's ``out_proj``: ablating head ``h`` is zeroing its slice of
    the projection's input. Attention that this direct path does not cover (extra key and
    value biases, a zero attention row, key padding masks, returned weights) runs through
    :func:`torch.nn.functional.multi_head_attention_forward` with an identity output projection.
    """

    def __init__(
        self, module: nn.MultiheadAttention, slot: _KeepSlot, offset: int, size: int, name: str, mean: Tensor | None
    ) -> None:
        super().__init__(slot, offset, size, mean)
        if not module._qkv_same_embed_dim:
            raise ValueError(
                f"component module {name!r}: heads are ablated for attention whose query, key and value "
                "share the embedding size only"
            )
        self.module, self.name = module, name
        self.direct = module.bias_k is None and not module.add_zero_attn
        identity = torch.eye(module.embed_dim, device=module.in_proj_weight.device)
        self.register_buffer("identity", identity, persistent=False)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        m = self.module
        if not m.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        direct = self.direct and key_padding_mask is None and not need_weights
        if direct and (attn_mask.ndim == 2 if attn_mask is not None else not is_causal):
            # (batch, heads, tokens, head_dim)
            heads, weights = self._attend(query, key, value, attn_mask, is_causal), None
        else:
            heads, weights = self._attend_general(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        if self.recording:
            self._record(heads.transpose(1, 2).reshape(-1, m.num_heads, m.head_dim))
        grouped, keep = self._grouped(heads)  # (masks, samples, heads, tokens, head_dim)
        factor = keep[:, None, :, None, None].to(heads.dtype)
        if self.mean is None:
            masked = grouped * factor
        else:
            mean = self.mean.to(heads.dtype)[:, None, :]
            masked = mean + (grouped - mean) * factor
        masked = masked.flatten(0, 1).transpose(1, 2).flatten(2)  # (batch, tokens, embed): the heads side by side
        out = F.linear(masked, m.out_proj.weight, m.out_proj.bias)
        return (out if m.batch_first else out.transpose(0, 1)), weights

    def _attend(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
        """Each head's output (batch, heads, tokens, head_dim) of batch-first inputs, without weights.

        ``is_causal`` says, as for ``nn.MultiheadAttention``, that ``attn_mask`` is the causal mask.
        """
        m = self.module
        e = m.embed_dim
        weight, bias = m.in_proj_weight, m.in_proj_bias
        if query is key and key is value:
            q, k, v = F.linear(query, weight, bias).chunk(3, dim=-1)
        else:
            b = (None,) * 3 if bias is None else bias.split(e)
            if key is value:
                q = F.linear(query, weight[:e], b[0])
                k, v = F.linear(key, weight[e:], None if bias is None else bias[e:]).chunk(2, dim=-1)
            else:
                q, k, v = (F.linear(t, w, bb) for t, w, bb in zip((query, key, value), weight.split(e), b, strict=True))
        q, k, v = (t.unflatten(-1, (m.num_heads, m.head_dim)).transpose(1, 2) for t in (q, k, v))
        if is_causal and q.shape[2] == k.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = ~attn_mask  # MultiheadAttention masks out True; attention takes part where True
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)

    def _attend_general(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None,
        need_weights: bool,
        attn_mask: Tensor | None,
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """As :meth:`_attend`, through ``multi_head_attention_forward``, with the weights it returns."""
        m = self.module
        heads, weights = F.multi_head_attention_forward(
            query.transpose(0, 1),
            key.transpose(0, 1),
            value.transpose(0, 1),
            m.embed_dim,
            m.num_heads,
            m.in_proj_weight,
            m.in_proj_bias,
            m.bias_k,
            m.bias_v,
            m.add_zero_attn,
            m.dropout,
            self.identity.to(query.dtype),
            None,
            training=False,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        heads = heads.transpose(0, 1).unflatten(-1, (m.num_heads, m.head_dim)).transpose(1, 2)
        return heads, weights


class _MaskedBatchNorm(_Gate):
    """An eval-mode BatchNorm2d that also masks its input channels per sample.

    In eval mode BatchNorm is ``x * scale + shift`` per channel, so masking its
    input is ``x * (scale * keep) + shift``: one elementwise pass, the cost of
    the BatchNorm alone. Ablated channels output ``shift``, exactly as when the
    preceding convolution's filter is zeroed.
    """

    def __init__(self, norm: nn.BatchNorm2d, slot: _KeepSlot, offset: int, size: int, mean: Tensor | None) -> None:
        super().__init__(slot, offset, size, mean)
        with torch.no_grad():
            scale = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight
            shift = -norm.running_mean * scale
            if norm.bias is not None:
                shift = shift + norm.bias
        self.register_buffer("scale", scale.detach().clone(), persistent=False)
        self.register_buffer("shift", shift.detach().clone()[:, None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.recording:
            self._record(x.movedim(1, -1).reshape(-1, self.size))
        grouped, keep = self._grouped(x)
        factor = (keep * self.scale)[:, None, :, None, None]  # (masks, 1, channels, 1, 1)
        shift = self.shift
        if self.mean is not None:  # an ablated channel is its mean: BN(m + (x - m) k) = x (s k) + shift + s m (1 - k)
            shift = shift + ((1 - keep) * self.scale * self.mean)[:, None, :, None, None]
        return torch.addcmul(shift.to(x.dtype), grouped, factor.to(x.dtype)).flatten(0, 1)


class AblatableNetwork(nn.Module):
    """A frozen copy of a network whose forward pass ablates components per sample.

    ``forward(x, keep)`` runs the copy on ``x`` (batch, ...) with the components
    of sample ``i`` multiplied by ``keep[i // (batch // len(keep))]`` (1 keeps,
    0 ablates): one row of ``keep`` per sample, or one per group of consecutive
    samples (e.g. one mask for every test input), so a mask is never repeated
    per sample. A component module whose only consumer is an eval-mode
    ``BatchNorm2d`` is masked inside that BatchNorm (see
    :class:`_MaskedBatchNorm`), so ablation costs no extra pass over its
    activations; any other module's output is multiplied by the mask. The copy
    is in eval mode, and the pairs are found by tracing the network with
    ``torch.fx`` (a network that cannot be traced keeps the multiplications).
    The gates read the mask from a slot that ``forward`` sets and clears, so
    ``forward`` compiles once (with ``torch.compile``) and serves every mask.

    Attributes
    ----------
    network : nn.Module
        The copy, with its component modules (or their BatchNorms) wrapped.
    n_folded : int
        Number of components masked inside a BatchNorm.
    """

    def __init__(self, model: nn.Module, components: ComponentSet) -> None:
        super().__init__()
        self.n_components = len(components)
        pairs = _batchnorm_consumers(model, components.module_names)
        self.network = copy.deepcopy(model).eval()
        self.slot = _KeepSlot()
        self.n_folded = 0
        self._reached = False
        self.gates: list[_Gate] = []  # in component order (not registered twice: they sit in the network)
        self.input_gates = nn.ModuleList()  # gates that hook a module in place (registered here: their buffers)
        means = components.means or {}
        sites = zip(
            components.module_names,
            components.offsets,
            components.sizes,
            components.kinds,
            components.sites,
            components.groups,
            strict=True,
        )
        for name, offset, size, kind, site, group in sites:
            module = self.network.get_submodule(name)
            target, mean = name, means.get(name)
            if site == "input":
                gate = _MaskedInput(module, self.slot, offset, size, name, kind, group, mean)
                self.input_gates.append(gate)
                self.gates.append(gate)
                continue
            if kind == "heads":
                if not isinstance(module, nn.MultiheadAttention):
                    raise ValueError(
                        f"component module {name!r} is a {type(module).__name__}: heads on a module's output are "
                        "those of an nn.MultiheadAttention; other heads live on their output projection's input "
                        "(site 'input', group the head size)"
                    )
                gate = _MaskedAttention(module, self.slot, offset, size, name, mean)
            elif kind == "channels" and name in pairs:
                target = pairs[name]
                gate = _MaskedBatchNorm(self.network.get_submodule(target), self.slot, offset, size, mean)
                self.n_folded += size
            else:
                gate = _MaskedOutput(module, self.slot, offset, size, name, kind, mean)
            parent, _, child = target.rpartition(".")
            setattr(self.network.get_submodule(parent), child, gate)
            self.gates.append(gate)

    def forward(self, x: Batch, keep: Tensor) -> Any:
        """What the network returns on ``x`` (a batch: :mod:`compattr.batches`) ablated by ``keep``.

        ``keep`` has ``n_components`` columns and one row per sample, or per group of samples.
        The first pass checks that every masked input was reached: a projection whose weight
        the model uses through a function, never calling the module, cannot be masked.
        """
        n = batch_len(x)
        if keep.ndim != 2 or keep.shape[1] != self.n_components or not 0 < len(keep) <= n or n % len(keep):
            raise ValueError(
                f"keep must be (rows, {self.n_components}) with rows dividing the batch of {n}, got {tuple(keep.shape)}"
            )
        self.slot.keep, self.slot.called = keep, set()
        try:
            out = call(self.network, x)
        finally:
            self.slot.keep = None
        if not torch.compiler.is_compiling() and not self._reached:  # once, outside compiled code
            missing = [gate.name for gate in self.input_gates if gate.offset not in self.slot.called]
            if missing:
                raise ValueError(
                    f"component modules {missing} were never called in the forward pass, so their inputs cannot be "
                    "masked (a model that uses a module's weight through a function): name another module"
                )
            self._reached = True
        return out


@torch.no_grad()
def component_means(
    model: nn.Module, components: ComponentSet, inputs: Batch, batch_size: int = 256
) -> dict[str, Tensor]:
    """Each module's mean unit value over ``inputs`` (and positions): the values of mean ablation.

    ``(size,)`` per channel or neuron module, ``(heads, head_dim)`` per attention module (each
    head's output before the output projection). Pass them to :meth:`ComponentSet.with_means`.
    Every position counts, padding included: give inputs without padding for exact means.
    """
    network = AblatableNetwork(model, components.with_means(None))
    device = next(network.parameters()).device
    for gate in network.gates:
        gate.recording = True
    keep = torch.ones(1, len(components), device=device)
    for start in range(0, batch_len(inputs), batch_size):
        network(to_device(take(inputs, slice(start, start + batch_size)), device), keep)
    return {
        name: (gate.total / gate.count).float().cpu()
        for name, gate in zip(components.module_names, network.gates, strict=True)
    }


def _batchnorm_consumers(model: nn.Module, names: tuple[str, ...]) -> dict[str, str]:
    """For each module in ``names`` whose output feeds only a ``BatchNorm2d`` with running statistics, its name.

    Modules or BatchNorms called more than once are left out, as is everything
    when ``torch.fx`` cannot trace the model (data-dependent control flow).
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # any untraceable model: no folding, the generic masks still apply
        return {}
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    wanted = set(names)
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in wanted or calls[node.target] != 1 or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_module" or calls[user.target] != 1:
            continue
        norm = model.get_submodule(user.target)
        if isinstance(norm, nn.BatchNorm2d) and norm.running_var is not None:
            pairs[node.target] = user.target
    return pairs


def zero_filters(model: nn.Module, components: ComponentSet, ablated: Tensor) -> None:
    """Zero, in place, the weights of the filters whose entry in ``ablated`` (n_components,) is true."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, offset, size in zip(components.module_names, components.offsets, components.sizes, strict=True):
            rows = ablated[offset : offset + size].bool()
            modules[name].weight[rows] = 0
