"""The front door: which components of a model does each of its outputs depend on?

:class:`ComponentAttributor` takes a model, its components (convolution filters,
linear neurons, attention heads), some inputs and an output function (the correct-class margin by
default). It runs the model under random ablation masks (:meth:`~ComponentAttributor.sample`)
and fits a linear component model per input (:meth:`~ComponentAttributor.attribute`),
or computes a sampling-free attribution (first-order priors, leave-one-out).
Results are :class:`Attribution` objects labelled with component names and input
ids; :func:`lds` scores them on held-out masks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import compattr.batches as batches
from compattr.baselines import leave_one_out
from compattr.batches import Batch
from compattr.components import ComponentSet
from compattr.datamodels import TrainingExamples
from compattr.discovery import conv_components, module_components, transformer_components
from compattr.estimators import ESTIMATORS, make_estimator
from compattr.features import PatchSet
from compattr.fitting import top_components
from compattr.masks import bernoulli_masks
from compattr.outputs import OUTPUTS, Output, resolve_output
from compattr.registry import DEFAULT_PRIOR
from compattr.scores import lds_scores
from compattr.units import make_evaluator, unit_prior

__all__ = ["ComponentAttributor", "Attribution", "Samples", "as_masks", "lds", "OUTPUTS", "PRIORS"]

#: Sampling-free attributions by name: first-order priors (keyword arguments of
#: :func:`compattr.units.unit_prior`), and ``"loo"`` (leave-one-out).
PRIORS: dict[str, dict[str, Any]] = {
    "atp": {"point": "unablated"},
    "atp_relu": {"point": "unablated", "relu": "exact"},
    "atp_mean": {"point": "mean"},
    "atp_relu_mean": {"point": "mean", "relu": "exact"},
    # attribution patching with its 32 largest attributions measured by ablation (36 passes)
    "atp_top_32": {"point": "unablated", "exact_top": 32},
    # the margin's maximum over the two closest classes taken exactly, from the masks' mean (5 passes)
    "atp_margin_mean_2": {"point": "mean", "margin": "simulated", "competitors": 2},
}


@dataclass(frozen=True)
class Samples:
    """Ablation masks and the outputs they give, labelled with what they were drawn over.

    Attributes
    ----------
    masks : ndarray of bool, shape (n_masks, n_components)
        True where a component is ablated.
    outputs : ndarray of float32, shape (n_masks, n_inputs)
        Each input's output under each mask.
    components : tuple of str, optional
        The components the masks' columns name (:meth:`ComponentAttributor.sample` records them);
        every use of the samples checks them against the attributor's or the attribution's.
    inputs : tuple, optional
        The input ids the outputs' columns name.
    ablation_rate : float, optional
        The rate the masks were drawn at.
    """

    masks: np.ndarray
    outputs: np.ndarray
    components: tuple[str, ...] | None = None
    inputs: tuple | None = None
    ablation_rate: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "masks", as_masks(self.masks))
        if self.outputs.ndim != 2 or len(self.outputs) != len(self.masks):
            raise ValueError(
                f"outputs must be (n_masks, n_inputs) for {len(self.masks)} masks, got {self.outputs.shape}"
            )
        for name, labels, size in (
            ("components", self.components, self.masks.shape[1]),
            ("inputs", self.inputs, self.outputs.shape[1]),
        ):
            if labels is not None and len(labels) != size:
                raise ValueError(f"{len(labels)} {name} named for {size} columns")

    def __len__(self) -> int:
        return len(self.masks)

    def __add__(self, other: Samples) -> Samples:
        other.check(self.components, self.inputs, "these samples")
        rate = self.ablation_rate if self.ablation_rate == other.ablation_rate else None
        return Samples(
            np.concatenate([self.masks, other.masks]),
            np.concatenate([self.outputs, other.outputs]),
            self.components,
            self.inputs,
            rate,
        )

    def check(self, components: Sequence[str] | None, inputs: Sequence | None, against: str) -> None:
        """An error unless the samples' components and inputs (where both sides name them) are ``against``'s."""
        for what, mine, theirs, size in (
            ("components", self.components, components, self.masks.shape[1]),
            ("inputs", self.inputs, inputs, self.outputs.shape[1]),
        ):
            if theirs is None:
                continue
            if size != len(theirs):
                raise ValueError(f"the samples have {size} {what} (columns) where {against} have {len(theirs)}")
            if mine is not None and tuple(mine) != tuple(theirs):
                first = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
                raise ValueError(
                    f"the samples were drawn over other {what} than {against}'s: column {first} is {mine[first]!r} "
                    f"there and {theirs[first]!r} here"
                )


def as_masks(masks: Any) -> np.ndarray:
    """Masks as a 2-D bool array; numbers other than 0 and 1 are an error, never cast to True."""
    masks = np.asarray(masks)
    if masks.ndim != 2:
        raise ValueError(f"masks must be 2-D (n_masks, n_components), got shape {masks.shape}")
    if masks.dtype == bool:
        return masks
    expected = f"masks must be boolean (True = ablated), or numbers 0 and 1; got dtype {masks.dtype}"
    if masks.dtype.kind not in "iuf":
        raise ValueError(expected)
    other = ~np.isin(masks, (0, 1))
    if other.any():
        raise ValueError(f"{expected} with values such as {masks[other][:3]}")
    return masks.astype(bool)


@dataclass(frozen=True)
class Attribution:
    """A linear component model per input: ``output ~ coef . mask + intercept``, labelled.

    ``coef[i, c]`` is the change of input ``i``'s output when component ``c`` is
    ablated (on top of the others the mask ablates).

    Attributes
    ----------
    coef : ndarray, shape (n_inputs, n_components)
    intercept : ndarray, shape (n_inputs,)
    components : tuple of str
        Component names, ``module.path:channel``.
    inputs : tuple
        Input ids.
    method : str
        The estimator or sampling-free method.
    passes : int
        Its cost in forward-equivalent passes per input batch (ablation masks,
        or a prior's forward and backward passes, a backward counting as two).
    """

    coef: np.ndarray
    intercept: np.ndarray
    components: tuple[str, ...]
    inputs: tuple
    method: str
    passes: int

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted outputs (n_masks, n_inputs) under bool masks (n_masks, n_components)."""
        masks = as_masks(masks)
        if masks.shape[1] != len(self.components):
            raise ValueError(f"masks must be (n_masks, {len(self.components)}), got {masks.shape}")
        return masks.astype(np.float64) @ self.coef.T + self.intercept

    def top(self, k: int = 5) -> dict[Any, list[tuple[str, float]]]:
        """Each input's ``k`` components with the largest effect in absolute value, as (name, effect) pairs."""
        return top_components(self.coef, self.components, self.inputs, k)


def lds(attribution: Attribution, samples: Samples, *, per_input: bool = False) -> float | np.ndarray:
    """Linear datamodeling score: Spearman correlation, per input, of predicted and true outputs on ``samples``.

    Returns the mean over inputs, or the per-input scores with ``per_input=True``.
    Score on masks the attribution was not fitted on. Samples that name their components
    and inputs must name the attribution's.
    """
    samples.check(attribution.components, attribution.inputs, "the attribution")
    spearman, _ = lds_scores(attribution.predict(samples.masks), samples.outputs)
    return spearman if per_input else float(spearman.mean())


class ComponentAttributor:
    """Attribute a model's outputs on some inputs to its components, by ablation and linear surrogates.

    Parameters
    ----------
    model : nn.Module
        The network; it is not changed (the attributor runs an ablatable copy in eval mode).
    components : "conv", "transformer", "heads", "neurons", sequence of str, ComponentSet, PatchSet or TrainingExamples
        What a mask ablates: ``"conv"``, every filter of every ``nn.Conv2d``;
        ``"transformer"``, every attention head and MLP neuron, found from the
        model's structure (``"heads"`` or ``"neurons"`` alone;
        :func:`~compattr.discovery.transformer_components`: torchvision and
        Hugging Face transformers, GPT-2, LLaMA-style, BERT-style, ViT); a list of
        module names or specs (:func:`~compattr.discovery.module_components`);
        or a :class:`~compattr.components.ComponentSet`. The same engine
        attributes to input patches (a :class:`~compattr.features.PatchSet`: a
        mask replaces them by a baseline) and to training examples (a
        :class:`~compattr.datamodels.TrainingExamples`: a mask leaves them out of
        a model trained per mask; ``model`` is then the one trained on all of them).
    inputs : Tensor, mapping of Tensor, or iterable of batches
        The inputs (n_inputs, ...); a mapping of such tensors (a tokenizer's
        ``BatchEncoding``: ``input_ids``, ``attention_mask``), passed to the
        model as keyword arguments; or a DataLoader (batches of either, of
        ``(inputs, targets)`` pairs, or mappings with a ``labels`` entry). They
        are gathered on the CPU and moved to the model's device once, or block
        by block when they are large (``inputs_on_device`` of the evaluator).
    targets : Tensor, optional
        Target classes (n_inputs,), or for a language model the next tokens
        (n_inputs,) or ``(position, token)`` rows (n_inputs, 2); needed by the
        named outputs (a DataLoader of pairs gives them).
    output : "margin", "logit", "loss" or callable, default="margin"
        What is attributed, per input: the correct-class margin (correct logit
        minus the largest other), the target logit, the cross-entropy loss (of
        the logits in whatever the model returns; a language model's at the
        last position, or at the targets' positions), or
        ``output(model_outputs, targets) -> (batch,)``, given what the model
        returns unchanged (a tensor, a tuple, a ``ModelOutput``).
    input_ids : sequence, optional
        Labels of the inputs (default 0 .. n_inputs - 1).
    seed : int, default=0
        Seed of the masks; each :meth:`sample` call draws from its own stream.
    batch_size : int, default=1024
        Largest number of (mask, input) samples per forward pass.
    **forward
        ``precision``, ``channels_last``, ``compile``, ``inputs_on_device`` of
        :class:`~compattr.sampling.ComponentMarginEvaluator`.

    Attributes
    ----------
    components : ComponentSet, PatchSet or TrainingExamples
        The units.
    samples_ : Samples or None
        The samples kept by :meth:`sample`, in the order drawn.
    ablation_rate_ : float or None
        Their ablation rate.
    """

    def __init__(
        self,
        model: nn.Module,
        components: str | Sequence[str] | ComponentSet,
        inputs: Tensor | Iterable,
        targets: Tensor | None = None,
        *,
        output: str | Output = "margin",
        input_ids: Sequence | None = None,
        seed: int = 0,
        batch_size: int = 1024,
        **forward: Any,
    ) -> None:
        self.model = model
        self.components = _component_set(model, components)
        self.inputs, self.targets = _collect(inputs, targets)
        if isinstance(output, str) and output in OUTPUTS and self.targets is None:
            raise ValueError(f"output {output!r} needs targets: pass targets, or a DataLoader of (input, target)")
        self.output = resolve_output(output)
        n_inputs = batches.batch_len(self.inputs)
        self.input_ids = tuple(range(n_inputs)) if input_ids is None else tuple(input_ids)
        if len(self.input_ids) != n_inputs:
            raise ValueError(f"{len(self.input_ids)} input_ids for {n_inputs} inputs")
        repeated = sorted({i for i in self.input_ids if self.input_ids.count(i) > 1}, key=str)
        if repeated:
            raise ValueError(f"input_ids must be unique; {repeated[:10]} appear more than once")
        self.seed, self.batch_size = seed, batch_size
        self._evaluator = make_evaluator(
            model, self.components, self.inputs, self.targets, batch_size, output=self.output, **forward
        )
        self._draws = 0
        self._priors: dict[tuple[str, float | None], tuple[np.ndarray, np.ndarray, int]] = {}
        self.samples_: Samples | None = None
        self.ablation_rate_: float | None = None

    def evaluate(self, masks: np.ndarray, *, progress: bool = True) -> np.ndarray:
        """Outputs (n_masks, n_inputs), float32, of the model ablated by bool masks (n_masks, n_components)."""
        masks = as_masks(masks)
        if masks.shape[1] != len(self.components):
            raise ValueError(f"masks must be (n_masks, {len(self.components)}), got {masks.shape}")
        step = self._evaluator.masks_per_call  # a progress step: the outputs do not depend on it
        chunks = range(0, len(masks), step)
        bar = tqdm(chunks, desc="perturbed evaluations", unit="call", disable=not progress or len(chunks) < 2)
        if not len(masks):
            return np.zeros((0, len(self.input_ids)), np.float32)
        outputs = np.concatenate([self._evaluator(masks[i : i + step]) for i in bar])
        bad = ~np.isfinite(outputs).all(axis=0)
        if bad.any():
            ids = [self.input_ids[i] for i in np.flatnonzero(bad)[:10]]
            raise FloatingPointError(
                f"output {getattr(self.output, '__name__', self.output)!r} is NaN or infinite on {int(bad.sum())} "
                f"inputs under some masks (input ids {ids}): check the output function on those inputs"
            )
        return outputs

    def sample(self, n_masks: int, ablation_rate: float = 0.05, *, keep: bool = True) -> Samples:
        """Draw ``n_masks`` random masks (each component ablated with probability ``ablation_rate``) and run them.

        Each call draws new masks from its own seeded stream. With ``keep``
        (default) the samples join :attr:`samples_`, which :meth:`attribute`
        fits on; ``keep=False`` returns held-out samples (e.g. for :func:`lds`).
        """
        if n_masks < 1:
            raise ValueError(f"n_masks must be at least 1, got {n_masks}")
        if not 0 < ablation_rate < 1:
            raise ValueError(f"ablation_rate must lie in (0, 1), got {ablation_rate}")
        if keep and self.ablation_rate_ is not None and ablation_rate != self.ablation_rate_:
            raise ValueError(
                f"ablation_rate {ablation_rate} differs from the kept samples' {self.ablation_rate_}: "
                "sample with keep=False, or use one rate"
            )
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(self._draws,)))
        self._draws += 1
        masks = bernoulli_masks(n_masks, len(self.components), ablation_rate, rng)
        samples = Samples(masks, self.evaluate(masks), tuple(self.components.names), self.input_ids, ablation_rate)
        constant = np.ptp(samples.outputs, axis=0) == 0 if n_masks > 1 else np.zeros(0, bool)
        if constant.any():
            ids = [self.input_ids[i] for i in np.flatnonzero(constant)[:10]]
            warnings.warn(
                f"{int(constant.sum())} inputs' outputs never change under {n_masks} masks (input ids {ids}): no "
                "component moves them (e.g. a zero-initialised classifier), and their LDS is undefined",
                stacklevel=2,
            )
        if keep:
            self.samples_ = samples if self.samples_ is None else self.samples_ + samples
            self.ablation_rate_ = ablation_rate
        return samples

    def attribute(self, method: str = "ridge", *, samples: Samples | None = None, **params: Any) -> Attribution:
        """Attribute every input's output to the components.

        ``method`` is an estimator of :data:`compattr.estimators.ESTIMATORS`
        (fitted on ``samples``, by default the kept ones, with ``params`` as its
        settings), a first-order prior of :data:`PRIORS` (no masks), or
        ``"loo"`` (leave-one-out, one ablated pass per component). Estimators
        that start from a prior (``gradient_prior``) take ``prior=`` a name of
        :data:`PRIORS` (default ``"atp"``), or a list of names to choose from per
        input on validation masks; they pay for every prior they compute.
        """
        if method in PRIORS:
            coef, intercept, passes = self._prior(method)
        elif method == "loo":
            evaluate = lambda m: self.evaluate(m, progress=False)  # noqa: E731 (the bar is leave_one_out's)
            coef, intercept = leave_one_out(evaluate, len(self.components))
            passes = len(self.components)
        elif method in ESTIMATORS:
            samples = samples if samples is not None else self.samples_
            if samples is None:
                raise ValueError(f"{method!r} fits on ablation samples: call sample() first, or pass samples=")
            samples.check(tuple(self.components.names), self.input_ids, "this attributor")
            estimator = make_estimator(method, {k: v for k, v in params.items() if k != "prior"})
            passes = len(samples)
            fit_params = {}
            if estimator.uses_prior:
                names = params.get("prior", DEFAULT_PRIOR)
                names = [names] if isinstance(names, str) else list(names)
                priors = [self._prior(name) for name in names]
                fit_params["prior"] = priors[0][0] if len(priors) == 1 else np.stack([p[0] for p in priors])
                passes += sum(p[2] for p in priors)
            elif "prior" in params:
                raise ValueError(f"{method!r} takes no prior")
            estimator.fit(samples.masks, samples.outputs, **fit_params)
            coef = np.atleast_2d(estimator.coef_)
            intercept = np.atleast_1d(estimator.intercept_)
        else:
            known = sorted([*ESTIMATORS, *PRIORS, "loo"])
            raise ValueError(f"unknown method {method!r}; known: {known}")
        return Attribution(
            np.asarray(coef, dtype=np.float64),
            np.asarray(intercept, dtype=np.float64),
            tuple(self.components.names),
            self.input_ids,
            method,
            int(passes),
        )

    def _prior(self, name: str) -> tuple[np.ndarray, np.ndarray, int]:
        """A first-order prior of :data:`PRIORS` by name: coef, intercept and its cost in passes.

        Computed once per point: later calls (another estimator with the same
        prior) reuse it, and still report its cost, which every method using it pays.
        """
        if name not in PRIORS:
            raise ValueError(f"unknown prior {name!r}; known: {sorted(PRIORS)}")
        settings = PRIORS[name]
        if settings["point"] != "unablated" and self.ablation_rate_ is None:
            raise ValueError(f"prior {name!r} is taken at the masks' mean: call sample() first (it sets the rate)")
        key = (name, None if settings["point"] == "unablated" else self.ablation_rate_)
        if key not in self._priors:
            self._priors[key] = self._compute_prior(settings)
        return self._priors[key]

    def _compute_prior(self, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
        return unit_prior(
            self.model,
            self.components,
            self.inputs,
            self.targets,
            ablation_rate=self.ablation_rate_,
            batch_size=max(1, self.batch_size // 4),
            output=self.output,
            evaluator=lambda masks: self.evaluate(masks, progress=False),  # for exact_top
            **settings,
        )


def _component_set(
    model: nn.Module, components: str | Sequence[str] | ComponentSet | PatchSet | TrainingExamples
) -> ComponentSet | PatchSet | TrainingExamples:
    if isinstance(components, (ComponentSet, PatchSet, TrainingExamples)):
        return components
    if isinstance(components, str):
        named = {
            "conv": lambda: conv_components(model),
            "transformer": lambda: transformer_components(model),
            "heads": lambda: transformer_components(model, neurons=False),
            "neurons": lambda: transformer_components(model, heads=False),
        }
        if components not in named:
            raise ValueError(
                f"components must be one of {sorted(named)}, a list of module names or a ComponentSet, "
                f"got {components!r}"
            )
        return named[components]()
    return module_components(model, list(components))


def _collect(inputs: Batch | Iterable, targets: Tensor | None) -> tuple[Batch, Tensor | None]:
    """Inputs and targets on the CPU, from a batch or an iterable of batches (a DataLoader).

    A batch is a tensor or a mapping of tensors (:mod:`compattr.batches`); a DataLoader's
    batches may be ``(inputs, targets)`` pairs, or mappings whose ``labels`` entry holds the targets.
    """
    if not isinstance(inputs, (Tensor, Mapping)):
        xs, ys = [], []
        for batch in inputs:
            if isinstance(batch, (tuple, list)):
                xs.append(batch[0])
                ys.append(batch[1])
            elif isinstance(batch, Mapping) and "labels" in batch:
                xs.append({key: value for key, value in batch.items() if key != "labels"})
                ys.append(batch["labels"])
            else:
                xs.append(batch)
        inputs = batches.concat(xs)
        if ys and targets is None:
            targets = torch.cat([torch.as_tensor(y).cpu() for y in ys])
    inputs = batches.to_device(batches.check_batch(inputs), "cpu")
    n = batches.batch_len(inputs)
    if n == 0:
        raise ValueError("no inputs given")
    if targets is not None:
        targets = torch.as_tensor(targets).cpu()
        if len(targets) != n:
            raise ValueError(f"{n} inputs but {len(targets)} targets")
    return inputs, targets
