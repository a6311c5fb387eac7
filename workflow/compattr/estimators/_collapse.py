"""ReLU-collapse: a 2-layer ReLU network per input, trained as one batched ensemble, collapsed to a linear model."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import Tensor

from compattr.estimators._base import (
    VALIDATION_FRACTION,
    Block,
    ComponentModel,
    Standardizer,
    check_prior,
    unstandardize,
)
from compattr.estimators._rows import RowCollector, Rows
from compattr.scores import MIN_MASKS, lds_scores


def collapse_relu_network(W1: Tensor, b1: Tensor, W2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the ReLU of ``W2 relu(W1 x + b1) + b2``: ``theta = W2 W1``, ``b = W2 b1 + b2``.

    Batched over networks: ``W1`` (T, d, C), ``b1`` (T, d), ``W2`` (T, d), ``b2`` (T,);
    returns ``theta`` (T, C) and ``b`` (T,).
    """
    theta = torch.einsum("td,tdc->tc", W2, W1)
    return theta, (W2 * b1).sum(1) + b2


def _least_squares_scale(pred: Tensor, target: Tensor) -> Tensor:
    """Per column, the least-squares ``s`` of ``target ~ s * pred`` for centred (n, T) columns.

    A column of ``pred`` with no variance gets ``s = 0``.
    """
    variance = (pred * pred).sum(0)
    covariance = (pred * target).sum(0)
    return torch.where(variance > 0, covariance / variance.clamp_min(1e-30), 0.0)


class ReluCollapseRegressor(ComponentModel):
    """The ReLU-collapse estimator: fit a 2-layer ReLU net per input, keep its linear collapse.

    Each input gets its own network ``phi(x) = W2 relu(W1 x + b1) + b2`` of width
    ``hidden``; all networks train together as one batched ensemble (the first
    layer of every network is one matrix product with the shared masks) with
    Adam(W) or SGD on the mean squared error of standardised masks (and, by
    default, standardised outputs). The returned linear model is the collapse
    ``theta = W2 W1``, ``b = W2 b1 + b2`` (see :func:`collapse_relu_network`),
    mapped back to raw masks and outputs; with ``calibrate`` (the default) its
    scale and intercept are refitted by least squares on the training rows.

    Training length is counted in optimisation steps (batches), so patience
    means the same at every number of masks. Every ``check_every`` steps each
    input's validation MSE is computed, of the collapsed model
    (``early_stopping="collapse"``) or of the network itself (``"network"``);
    each input keeps its best step count and stops when it has not improved
    for ``patience`` steps (it leaves the ensemble, so the others train faster).
    Then every network is trained again from the same initialisation on all
    the rows, standardised by all of them, for its chosen number of steps
    (Goodfellow et al., 2016, Algorithm 7.2): the returned model is a fit on
    every mask the budget counts. An input whose best step count is 0 keeps its
    random initialisation: it is marked in ``failed_``. With
    ``early_stopping="none"`` there is no validation split and every network
    trains on all rows for ``max_steps``. With networks seeded per input
    position, each input gets the network it would get fitted alone.

    Binary masks with few ablated units (on CPU) are held as the coordinates of
    those units and multiplied as sparse matrices (see :class:`Rows`);
    :meth:`fit_blocks` gathers them block by block, e.g. from a store's chunks.

    Why calibrate: dropping the ReLUs counts every unit as always active, so the
    raw collapse's slope is off by a factor that drifts during training. Its
    validation MSE is then dominated by that scale, which rank-based scores
    (LDS) ignore, and stopping on it keeps a far too early step. The least-squares
    factor is usually positive (LDS unchanged), but it may be negative, which
    flips the sign of the collapse: ``calibration_`` records it per input.
    ``calibrate=False`` is the seed's raw collapse.

    Parameters
    ----------
    hidden : int, default=32
        Width ``d`` of each network.
    lr : float, default=1e-3
        Learning rate.
    optimizer : {"adam", "sgd"}, default="adam"
        AdamW (decoupled weight decay) or SGD (L2 weight decay, ``momentum``).
    momentum : float, default=0.0
        SGD's momentum (ignored by Adam).
    weight_decay : float, default=0.0
    init_scale : float, default=1.0
        Multiplier of PyTorch's default (Kaiming-uniform) initialisation.
    max_steps : int, default=3000
        Largest number of optimisation steps.
    batch_size : int, default=256
        Masks per step (all of them when fewer).
    check_every : int, default=10
        Steps between validation checks (the chosen step count is a multiple of it).
    patience : int, default=300
        Steps without improvement after which an input stops training.
    tol : float, default=0.0
        Least fall of an input's validation MSE (of standardised outputs) that counts as an
        improvement for ``patience``, as scikit-learn's MLP ``tol``: a smaller fall still moves
        the best step, but does not keep the input training.
    early_stopping : {"auto", "collapse", "network", "none"}, default="auto"
        Whose validation MSE picks each input's step count; "auto" is the
        predictor the estimator returns (the collapse here, the network for
        :class:`ReluNetRegressor`); "none": no validation split, ``max_steps`` on all rows.
    fit_bias : bool, default=True
        Train ``b1`` and ``b2``; when False they stay zero (outputs are centred).
    standardize_targets : bool, default=True
        Train on z-scored outputs (else on centred raw outputs).
    calibrate : bool, default=True
        Rescale each input's collapse by the least-squares factor on the
        training rows (and refit its intercept) before validating and returning it.
    validation_fraction : float, default=0.2
    random_state : int, default=0
        Seed of the batch order, and with each input's position, of its initialisation.
    device : str, default="cpu"

    Attributes
    ----------
    coef_, intercept_
    n_iter_ : ndarray of shape (n_inputs,)
        Step count each input kept (chosen on validation, used in the refit).
    failed_ : ndarray of shape (n_inputs,)
        Whether the input kept step 0 with a random initialisation (with a
        prior, step 0 is the prior: a choice, not a failure).
    validation_mse_ : ndarray of shape (n_inputs,)
        Validation MSE of the predictor returned (the collapse here), at the kept
        step, in output units, before the refit; comparable across settings whatever ``early_stopping`` is.
    validation_spearman_ : ndarray of shape (n_inputs,)
        Spearman correlation of that predictor with the validation outputs, at the kept step (NaN with
        fewer than 3 validation rows).
    calibration_ : ndarray of shape (n_inputs,)
        Least-squares factor applied to the returned collapse (1 without ``calibrate``;
        negative where the rescaling flipped its sign). Not set when the predictor is the network.
    """

    _activation = "relu"
    _predictor = "collapse"
    _parameter_constraints: dict[str, list[Any]] = {
        **ComponentModel._parameter_constraints,
        **{
            name: [Interval(Integral, 1, None, closed="left")]
            for name in ("hidden", "max_steps", "batch_size", "check_every", "patience")
        },
        "lr": [Interval(Real, 0, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "optimizer": [StrOptions({"adam", "sgd"})],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "init_scale": [Interval(Real, 0, None, closed="left")],
        "early_stopping": [StrOptions({"auto", "collapse", "network", "none"})],
        "fit_bias": ["boolean"],
        "standardize_targets": ["boolean"],
        "calibrate": ["boolean"],
        "validation_fraction": VALIDATION_FRACTION,
        "random_state": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        hidden: int = 32,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        init_scale: float = 1.0,
        max_steps: int = 3000,
        batch_size: int = 256,
        check_every: int = 10,
        patience: int = 300,
        tol: float = 0.0,
        early_stopping: str = "auto",
        fit_bias: bool = True,
        standardize_targets: bool = True,
        calibrate: bool = True,
        validation_fraction: float = 0.2,
        random_state: int = 0,
        device: str = "cpu",
    ) -> None:
        self.hidden = hidden
        self.lr = lr
        self.optimizer = optimizer
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.init_scale = init_scale
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.check_every = check_every
        self.patience = patience
        self.tol = tol
        self.early_stopping = early_stopping
        self.fit_bias = fit_bias
        self.standardize_targets = standardize_targets
        self.calibrate = calibrate
        self.validation_fraction = validation_fraction
        self.random_state = random_state
        self.device = device

    def _memory_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        """Masks as the coordinates of their rare value on CPU (at most one byte a cell), as float32 and
        their standardised copy on a GPU; every input's network (``hidden x (components + 2)`` float32
        weights) eight times over: parameters, gradients, the optimizer's states, the refit's copy, and
        the copies made when inputs leave the ensemble; a step's hidden layer four times over and the
        validation rows' once; predictions and coefficients.
        """
        masks = n_masks * n_components * (1 if torch.device(self.device).type == "cpu" else 8)
        networks = 4 * self.hidden * (n_components + 2) * n_inputs
        batch = min(n_masks, self.batch_size)
        validation = math.ceil(self.validation_fraction * n_masks) if self._validates else 0
        hidden = 4 * self.hidden * n_inputs * (4 * batch + validation)
        predictions = 4 * 4 * n_masks * n_inputs + 3 * 8 * n_components * n_inputs
        return masks + 8 * networks + hidden + predictions

    def memory_advice(self, n_masks: int, n_components: int) -> str:
        return "fewer masks or a smaller hidden layer"

    def readout_bytes(self, n_masks: int, n_components: int, n_inputs: int) -> int:
        """What one more estimator fitted with this one (:func:`fit_together`) adds to :meth:`memory_bytes`:
        its networks at its own steps and its validation predictions."""
        return 4 * self.hidden * (n_components + 2) * n_inputs + 4 * n_masks * n_inputs

    @property
    def _validates(self) -> bool:  # type: ignore[override]
        return self.early_stopping != "none"

    def _initial_weights(self, T: int, C: int, prior: Tensor | None = None) -> list[Tensor]:
        """Scaled Kaiming-uniform weights; with ``prior`` (T, C), plus pairs of units that encode it.

        Each input's network is drawn from its own generator, seeded by
        ``(random_state, input)``: a network does not depend on which other
        inputs are fitted with it.

        Pairs of units ``(W1, W2) = (+k a, +c)`` and ``(-k a, -c)`` collapse to
        ``2 c k a``; with ``c k = 1 / (2 * pairs)`` the prior part of the collapse
        is ``a`` exactly, and both layers get the same norm. The network itself
        is then linear in that part too (``c relu(k a.x) - c relu(-k a.x) = c k a.x``),
        with half the collapse's slope.
        """
        d = self.hidden
        bound1, bound2 = self.init_scale / math.sqrt(C), self.init_scale / math.sqrt(d)
        drawn: list[list[Tensor]] = [[], [], [], []]
        for t in range(T):
            seed = int(np.random.SeedSequence([self.random_state, t]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            shapes = (((d, C), bound1), ((d,), bound1), ((d,), bound2), ((), bound2))  # W1, b1, W2, b2
            for (shape, bound), out in zip(shapes, drawn, strict=True):
                out.append((torch.rand(shape, generator=generator) * 2 - 1) * bound)
        params = [torch.stack(values).to(self.device) for values in drawn]
        if not self.fit_bias:
            for bias in params[1::2]:
                bias.zero_()
        pairs = d // 2
        if prior is not None and pairs:
            norm = prior.norm(dim=1, keepdim=True).float().to(self.device)  # (T, 1)
            c = (norm / (2 * pairs)).sqrt()
            k = torch.where(norm > 0, 1 / (2 * pairs * c.clamp_min(1e-30)), 0.0)
            sign = torch.cat([torch.ones(pairs), -torch.ones(pairs)]).to(self.device)  # (2 * pairs,)
            params[0][:, : 2 * pairs] += sign[None, :, None] * k[:, :, None] * prior.float()[:, None, :]
            params[2][:, : 2 * pairs] += sign[None, :] * c
        params[0] = params[0].permute(2, 0, 1).contiguous()  # (C, T, d): the first layer of all networks at once
        return params

    def _forward(self, rows: Rows, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Hidden activations (n, T, d) and outputs (n, T) of every network on standardised masks ``rows`` (n, C)."""
        W1, b1, W2, b2 = params
        C, T, d = W1.shape
        hidden = rows.affine(W1.reshape(C, T * d), b1.reshape(-1)).reshape(-1, T, d)
        if self._activation == "relu":
            hidden.clamp_min_(0)
        return hidden, torch.einsum("ntd,td->nt", hidden, W2) + b2

    def _network(self, rows: Rows, params: list[Tensor]) -> Tensor:
        """Outputs (n, T) of every network on standardised masks ``rows`` (n, C)."""
        return self._forward(rows, params)[1]

    def _gradients(self, rows: Rows, hidden: Tensor, residual: Tensor, params: list[Tensor]) -> list[Tensor]:
        """Gradients of the step's loss (per input, the mean squared ``residual``; summed) for ``params``.

        Backpropagation by hand, as scikit-learn's MLP does: ``hidden`` and
        ``residual`` (outputs minus targets) come from :meth:`_forward` on ``rows``.
        """
        W1, _, W2, _ = params
        C, T, d = W1.shape
        grad_out = residual * (2 / len(residual))  # (n, T)
        grad_hidden = grad_out[:, :, None] * W2  # (n, T, d)
        if self._activation == "relu":  # zero where the unit is off: ReLU's own backward (masked_fill is 30x slower)
            grad_hidden = torch.ops.aten.threshold_backward(grad_hidden, hidden, 0)
        grad_W2 = torch.einsum("ntd,nt->td", hidden, grad_out)
        grad_hidden = grad_hidden.reshape(-1, T * d)
        grad_b1 = grad_hidden.sum(0)
        grad_W1 = rows.transpose_matmul(grad_hidden, grad_b1)
        return [grad_W1.reshape(C, T, d), grad_b1.reshape(T, d), grad_W2, grad_out.sum(0)]

    def _optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        """The optimizer over the trained parameters (the biases stay zero without ``fit_bias``)."""
        trained = params if self.fit_bias else params[0::2]
        if self.optimizer == "adam":
            return torch.optim.AdamW(trained, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        return torch.optim.SGD(trained, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, fused=True)

    def _keep_inputs(
        self, params: list[Tensor], optimizer: torch.optim.Optimizer, keep: Tensor
    ) -> tuple[list[Tensor], torch.optim.Optimizer]:
        """The parameters and optimizer (with its state) of the inputs ``keep`` (bool over the current ones)."""

        def select(t: Tensor, first_layer: bool) -> Tensor:
            return t[:, keep] if first_layer else t[keep]

        kept = [select(p, i == 0).clone() for i, p in enumerate(params)]
        new = self._optimizer(kept)
        for old_param, param in zip(optimizer.param_groups[0]["params"], new.param_groups[0]["params"], strict=True):
            first_layer = old_param is params[0]
            state = optimizer.state.get(old_param, {})
            new.state[param] = {k: select(v, first_layer).clone() if v.dim() else v.clone() for k, v in state.items()}
        return kept, new

    def fit(self, X: Any, Y: Any, prior: Any = None) -> ReluCollapseRegressor:
        """Choose every input's step count on the validation rows, then train it on all rows.

        ``prior`` (n_inputs, n_components), optional: a linear attribution in raw
        units that the networks start from (see :meth:`_initial_weights`).
        """
        return super().fit(X, Y, prior=prior)

    def _fit_blocks(self, fit_blocks: Iterator[Block], validation_blocks: Iterator[Block], prior: Any = None) -> None:
        _fit_group([self], fit_blocks, validation_blocks, prior)

    def _training(self) -> tuple[Any, ...]:
        """What the networks' training depends on: equal for two estimators whose fits train the same networks.

        Everything but ``early_stopping`` (while both validate) and ``calibrate``, which choose
        and read out the networks: :func:`fit_together` trains such estimators once.
        """
        params = {k: v for k, v in self.get_params().items() if k not in ("early_stopping", "calibrate")}
        return type(self)._activation, self.uses_prior, self._validates, tuple(sorted(params.items()))

    def _stops_on_network(self) -> bool:
        """Whether the step count is chosen on the network's validation MSE (else on the predictor's)."""
        return (self.early_stopping if self.early_stopping != "auto" else self._predictor) == "network"

    def _finish(
        self, final: list[Tensor], chosen: Tensor, rows: Rows, B: Tensor, xs: Standardizer, ys: Standardizer, prior: Any
    ) -> None:
        """Set the fitted attributes from the networks ``final`` trained on all ``rows`` for ``chosen`` steps."""
        T = B.shape[1]
        self.n_iter_ = chosen.cpu().numpy()
        # Step 0 keeps the initialisation: a failure when it is random, a choice when it encodes a prior.
        encoded = np.zeros(T, dtype=bool) if prior is None else (prior.abs().amax(1) > 0).cpu().numpy()
        self.failed_ = (self.n_iter_ == 0) & ~encoded
        # A component never (or always) ablated in the rows carries no information from the masks: its first-layer
        # weights, still their initialisation, keep only what encodes the prior (nothing without one), so its
        # effect is the prior's or 0 (as in the linear estimators), never the random initialisation.
        constant = xs.constant.to(final[0].device)
        if constant.any():
            encoded = torch.zeros_like(final[0][constant])
            if prior is not None:
                with_prior, random = self._init_params(T, xs, ys, prior)[0], self._init_params(T, xs, ys, None)[0]
                encoded = (with_prior - random)[constant]
            final[0][constant] = encoded
        collapse, bias, scale = self._collapsed(final, rows, B)
        if self._predictor == "collapse":  # a network predictor's collapse is for inspection only
            self.calibration_ = scale.cpu().numpy()
        coef, intercept = unstandardize(collapse, bias, xs, ys)
        self._set_linear(coef, intercept)
        if self._predictor == "network":
            network = {"W1": final[0].permute(1, 2, 0), "b1": final[1], "W2": final[2], "b2": final[3]}
            network |= {"x_mean": xs.mean, "x_std": xs.std, "y_mean": ys.mean, "y_std": ys.std}
            self.network_ = {k: v.detach().cpu().contiguous().numpy() for k, v in network.items()}

    def _standardizers(self, collector: RowCollector) -> tuple[Standardizer, Standardizer]:
        """The rows' z-scores (outputs only centred without ``standardize_targets``)."""
        xs, ys = collector.standardizers()
        if not self.standardize_targets:
            ys.std = torch.ones_like(ys.std)
        return xs, ys

    def _collapsed(
        self, params: list[Tensor], rows: Rows, target: Tensor, calibrate: bool | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The networks' collapse (T, C) and bias (T,) on standardised units, calibrated on ``rows``, and the factor.

        ``calibrate``: whether to rescale by the least-squares factor (default: this estimator's setting).
        """
        theta, bias = collapse_relu_network(params[0].permute(1, 2, 0), *params[1:])
        if not (self.calibrate if calibrate is None else calibrate):
            return theta, bias, torch.ones_like(bias)
        scale = _least_squares_scale(rows @ theta.T, target)
        return scale[:, None] * theta, torch.zeros_like(bias), scale

    def _init_params(self, T: int, xs: Standardizer, ys: Standardizer, prior: Tensor | None) -> list[Tensor]:
        """Initial parameters of every network (see :meth:`_initial_weights`), the prior in standardised units."""
        if prior is not None:  # to standardised units: the inverse of unstandardize
            prior = prior * (xs.std[None, :] / ys.std[:, None]).double()
        return self._initial_weights(T, len(xs.mean), prior)

    def _select_steps(
        self,
        rows: Rows,
        B: Tensor,
        val_rows: Rows,
        Bv: Tensor,
        params: list[Tensor],
        readouts: Sequence[ReluCollapseRegressor],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Each readout's best step count per input on the validation rows, and its predictor's validation
        MSE and Spearman there, each (n_readouts, n_inputs).

        ``readouts``: estimators that train these networks (this one's training settings) and
        differ in what they stop on and return. Each keeps its own best step and stops with its
        own patience; an input trains on while one of them has not stopped. Only each
        predictor's validation predictions at its best step are kept (not the parameters): the
        refit trains again from the initialisation.
        """
        R, T = len(readouts), B.shape[1]
        best_pred = Bv.new_zeros((R, *Bv.shape))
        best_step = torch.zeros(R, T, dtype=torch.long, device=B.device)
        best_loss = torch.zeros(R, T, dtype=B.dtype, device=B.device)
        stale = torch.zeros(R, T, dtype=torch.long, device=B.device)

        def check(step: int, params: list[Tensor], active: Tensor, live: Tensor) -> Tensor:
            """Record the readouts of the ``live`` ``active`` inputs where ``step`` improved; which inputs go on."""
            cache: dict[Any, Tensor] = {}

            def predict(kind: Any) -> Tensor:
                if kind not in cache:
                    if kind == "network":
                        cache[kind] = self._network(val_rows, params)
                    else:  # a collapse, calibrated or not (``kind``)
                        collapse, bias, _ = self._collapsed(params, rows, B[:, active], calibrate=kind)
                        cache[kind] = val_rows @ collapse.T + bias
                return cache[kind]

            going = torch.zeros_like(live)
            for r, readout in enumerate(readouts):
                returned = predict("network" if readout._predictor == "network" else readout.calibrate)
                pred = predict("network") if readout._stops_on_network() else returned
                loss = ((pred - Bv[:, active]) ** 2).mean(0)
                open_ = live & (stale[r, active] < self.patience)  # this readout has not stopped yet
                better = open_ & (loss < best_loss[r, active]) if step else open_
                enough = open_ & (loss < best_loss[r, active] - self.tol) if step else open_
                improved = active[better]
                best_loss[r, improved], best_step[r, improved] = loss[better], step
                best_pred[r][:, improved] = returned[:, better]
                stale[r, active] = torch.where(enough, 0, stale[r, active] + open_ * self.check_every)
                going |= open_ & (stale[r, active] < self.patience)
            return going

        self._train(rows, B, params, check=check)
        # Scores of each predictor returned (the collapse, or the network), whatever chose the step.
        mse = ((best_pred - Bv) ** 2).mean(1)
        if len(Bv) < MIN_MASKS:  # too few validation rows for a rank correlation: not recorded
            return best_step, mse, torch.full((R, T), float("nan"))
        spearman = [lds_scores(pred.cpu().numpy(), Bv.cpu().numpy())[0] for pred in best_pred]
        return best_step, mse, torch.as_tensor(np.stack(spearman))

    def _train(
        self,
        rows: Rows,
        B: Tensor,
        params: list[Tensor],
        *,
        stop: Tensor | None = None,
        check: Any = None,
    ) -> list[list[Tensor]]:
        """Train every network on ``rows`` (standardised masks) and ``B`` (standardised outputs), batch by batch.

        Either ``stop`` (n_readouts, T): the parameters of every input after each
        readout's number of steps are returned (one list per readout), and an input
        leaves after the largest; or ``check(step, params, active, live)``, called
        at step 0 and every ``check_every`` steps, returning which of the ``live``
        ones of the ``active`` inputs go on (nothing is returned). Inputs train
        independently (the loss is a sum over inputs), so one that has left may
        stay in the ensemble, untouched by the checks, until at least an eighth of
        it has left: then they all drop out at once, and later steps cost only the
        rest. The batches run through a random permutation of the rows per epoch,
        seeded by ``random_state``; with no more rows than ``batch_size``, every
        step takes all rows in order.
        """
        n, T = len(rows), B.shape[1]
        finals = [[p.clone() for p in params] for _ in range(len(stop))] if stop is not None else []
        last = stop.amax(0) if stop is not None else None
        active = torch.arange(T, device=B.device)
        live = torch.ones(T, dtype=torch.bool, device=B.device)
        optimizer = self._optimizer(params)

        def leave(step: int, going: Tensor) -> bool:
            """Keep each readout's networks that reached its step; stop the ``live`` inputs not ``going``.

            Whether any are left. Drops the stopped ones in groups.
            """
            nonlocal active, live, params, optimizer
            for final, steps in zip(finals, stop if stop is not None else [], strict=True):
                reached = live & (steps[active] == step)
                if reached.any():
                    final[0][:, active[reached]] = params[0][:, reached]  # W1 is (C, T, d)
                    for out, current in zip(final[1:], params[1:], strict=True):
                        out[active[reached]] = current[reached]
            live = going
            if not live.any():
                return False
            if 8 * int((~live).sum()) >= len(live):
                active = active[live]
                params, optimizer = self._keep_inputs(params, optimizer, live)
                live = torch.ones(len(active), dtype=torch.bool, device=B.device)
            return True

        first = last > 0 if last is not None else check(0, params, active, live)
        if not leave(0, first):
            return finals
        order_generator = torch.Generator().manual_seed(self.random_state)
        order, position = torch.empty(0, dtype=torch.long), n
        full_batch = n <= self.batch_size  # every step sees all rows: no shuffling, no gathering
        for step in range(1, self.max_steps + 1):
            if full_batch:
                batch, targets = rows, B
            else:
                if position >= n:
                    order, position = torch.randperm(n, generator=order_generator).to(self.device), 0
                idx = order[position : position + self.batch_size]
                position += self.batch_size
                batch, targets = rows.take(idx), B[idx]
            hidden, out = self._forward(batch, params)
            residual = out - targets[:, active]
            for param, grad in zip(params, self._gradients(batch, hidden, residual, params), strict=True):
                param.grad = grad
            optimizer.step()
            if last is not None:
                going = live & (last[active] > step)
            elif step % self.check_every == 0:
                going = check(step, params, active, live)
            else:
                continue
            if not leave(step, going):
                return finals
        return finals


def _fit_group(
    group: Sequence[ReluCollapseRegressor],
    fit_blocks: Iterator[Block],
    validation_blocks: Iterator[Block],
    prior: Any = None,
) -> None:
    """Fit every estimator of ``group`` (they share :meth:`~ReluCollapseRegressor._training`) with one training.

    The networks train once on the fit rows, every estimator choosing its own step count per
    input on the validation rows; then once more from the initialisation on all rows, to the
    largest chosen step, each estimator keeping the networks at its own step. Each ends as its
    own fit would.
    """
    lead = group[0]
    with torch.no_grad():  # gradients are computed by hand (see _gradients)
        collected = [RowCollector(lead.device), RowCollector(lead.device)]
        for collector, blocks in zip(collected, (fit_blocks, validation_blocks), strict=True):
            for masks, outputs in blocks:
                collector.add(masks, outputs)
        n_fit, n_val = collected[0].n, collected[1].n
        for estimator in group:
            estimator._check_rows(n_fit, n_val, collected[0].n_columns if n_fit else 0)
        shapes = [(c.n_columns, c.n_outputs) for c in collected if c.n]
        if len(set(shapes)) > 1:
            raise ValueError("the fit and validation rows have different numbers of components or outputs")
        T = collected[0].n_outputs
        if prior is not None:
            prior = check_prior(prior, T, lead.n_features_in_, lead.device)
        if lead._validates:
            xs, ys = lead._standardizers(collected[0])
            rows, B = collected[0].rows(xs, ys)
            val_rows, Bv = collected[1].rows(xs, ys)
            init = lead._init_params(T, xs, ys, prior)
            chosen, mse, spearman = lead._select_steps(rows, B, val_rows, Bv, init, group)
            for estimator, mse_r, spearman_r in zip(group, mse, spearman, strict=True):
                estimator.validation_mse_ = (mse_r * ys.std**2).cpu().numpy()
                estimator.validation_spearman_ = spearman_r.cpu().numpy()
            del rows, val_rows
            collected[0].extend(collected[1])
        else:
            chosen = torch.full((len(group), T), lead.max_steps, dtype=torch.long)
        # The refit: every network from its initialisation, on all rows, for its chosen number of steps.
        xs, ys = lead._standardizers(collected[0])
        rows, B = collected[0].rows(xs, ys)
        del collected
        finals = lead._train(rows, B, lead._init_params(T, xs, ys, prior), stop=chosen.to(B.device))
        for estimator, final, steps in zip(group, finals, chosen, strict=True):
            estimator._finish(final, steps, rows, B, xs, ys, prior)


def fit_together(
    estimators: Sequence[ReluCollapseRegressor],
    fit_blocks: Iterable[Block],
    validation_blocks: Iterable[Block] = (),
    prior: Any = None,
) -> list[ReluCollapseRegressor]:
    """Fit 2-layer estimators that train the same networks with one training; each ends as its own fit would.

    Such estimators (``relu_collapse``, ``relu_collapse_raw`` and ``relu_net`` with the same
    settings, say) differ only in what they stop on (``early_stopping``) and return (the
    calibrated or raw collapse, or the network): one training serves them all, for about
    the cost of the longest. Blocks as :meth:`ComponentModel.fit_blocks` takes them; ``prior``
    for estimators that take one. Returns ``estimators``, fitted.
    """
    if not estimators:
        raise ValueError("no estimators to fit")
    for estimator in estimators:
        if not isinstance(estimator, ReluCollapseRegressor):
            raise TypeError(f"fit_together fits 2-layer estimators; got {type(estimator).__name__}")
        estimator._validate_params()
        estimator._single_output = False
    lead = estimators[0]
    differ = [e for e in estimators[1:] if e._training() != lead._training()]
    if differ:
        raise ValueError(
            f"{differ[0]!r} does not train the same networks as {lead!r}: fit_together needs "
            "estimators of one kind with the same settings but for early_stopping and calibrate"
        )
    _fit_group(estimators, iter(fit_blocks), iter(validation_blocks), prior)
    return list(estimators)


class LinearCollapseRegressor(ReluCollapseRegressor):
    """Control: the same 2-layer network and training as ReLU-collapse, with no ReLU.

    The network is then linear, and its collapse is exactly the network; any
    difference from :class:`ReluCollapseRegressor` is due to the ReLU. Its steps
    never form the hidden activations: each network's output is the masks times
    ``theta = W2 W1``, and every gradient follows from the masks' product with the
    output's gradient (the same training, at a product of ``n_inputs`` columns
    instead of ``n_inputs x hidden``).
    """

    _activation = "identity"

    def _forward(self, rows: Rows, params: list[Tensor]) -> tuple[None, Tensor]:
        """Outputs (n, T) of every network on standardised masks ``rows``: its collapse, exactly (no hidden layer)."""
        W1, b1, W2, b2 = params
        return None, rows.affine(torch.einsum("ctd,td->ct", W1, W2), (b1 * W2).sum(1) + b2)

    def _gradients(self, rows: Rows, hidden: None, residual: Tensor, params: list[Tensor]) -> list[Tensor]:
        """The gradients of :meth:`ReluCollapseRegressor._gradients` through ``g = rows' d_out`` (C, T).

        With ``h = rows W1 + b1``: ``dW1 = g W2``, ``db1 = sum(d_out) W2``,
        ``dW2 = W1' g + b1 sum(d_out)`` per input, ``db2 = sum(d_out)``.
        """
        W1, b1, W2, _ = params
        grad_out = residual * (2 / len(residual))  # (n, T)
        sums = grad_out.sum(0)
        g = rows.transpose_matmul(grad_out, sums)  # (C, T)
        grad_W2 = torch.einsum("ctd,ct->td", W1, g).addcmul_(b1, sums[:, None])
        return [g[:, :, None] * W2, sums[:, None] * W2, grad_W2, sums]


class PriorReluCollapseRegressor(ReluCollapseRegressor):
    """ReLU-collapse whose networks start from a prior attribution (the workflow's: attribution patching).

    Half of each network's units encode ``+a`` and half ``-a`` (see
    :meth:`ReluCollapseRegressor._initial_weights`), so at initialisation the
    collapse is the prior (plus the small random initialisation) and the network
    is linear along it; training then proceeds as for :class:`ReluCollapseRegressor`.
    """

    uses_prior = True


class ReluNetRegressor(ReluCollapseRegressor):
    """Control: the uncollapsed 2-layer ReLU network used directly as the predictor.

    Trained as :class:`ReluCollapseRegressor`, stopped early on the network's own
    validation MSE (``early_stopping="auto"``); ``predict`` runs the network. ``coef_`` and
    ``intercept_`` hold the network's collapse, for inspection only.
    """

    _predictor = "network"

    def predict(self, X: Any) -> np.ndarray:
        """Network outputs, (n_masks,) or (n_masks, n_inputs) as ``Y`` was at fit."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        out = predict_network(self.network_, X)  # float64, as the linear models predict
        return out[:, 0] if self._single_output else out


def predict_network(network: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
    """Outputs (n_masks, n_inputs) of saved 2-layer ReLU networks (``ReluNetRegressor.network_``).

    Computed in float64 from the float32 weights, so a mask's output does not depend on the
    other masks it is predicted with (float32 matrix products round differently by batch size).
    """
    net = {key: np.asarray(value, dtype=np.float64) for key, value in network.items()}
    A = (np.asarray(masks, dtype=np.float64) - net["x_mean"]) / net["x_std"]
    T, d, C = net["W1"].shape
    hidden = np.maximum((A @ net["W1"].reshape(T * d, C).T).reshape(-1, T, d) + net["b1"], 0)
    return ((hidden * net["W2"]).sum(-1) + net["b2"]) * net["y_std"] + net["y_mean"]
