"""Shared fixtures: a small trained model on the bundled digits, and planted linear truths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compattr.data import load_dataset
from compattr.discovery import conv_components
from compattr.models import build_model, train_classifier

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    """The digits train and test splits."""
    return load_dataset("digits", test_fraction=0.3, seed=0)


@pytest.fixture(scope="session")
def trained_model(digits):
    """A small CIFAR-style ResNet trained briefly on the digits, with its components."""
    train, _ = digits
    model = build_model({"name": "cifar_resnet", "widths": [8, 16], "blocks": [1, 1]}, 10, 1)
    train_classifier(model, train, epochs=3, batch_size=64, lr=0.1, weight_decay=5e-4, seed=0)
    return model, conv_components(model)


def planted_problem(
    n: int,
    n_units: int = 60,
    n_outputs: int = 5,
    noise: float = 0.1,
    alpha: float = 0.1,
    seed: int = 0,
    sparse: bool = False,
):
    """Bernoulli masks and outputs that are linear in them (known theta and bias) plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(n_outputs, n_units))
    if sparse:
        theta *= rng.random((n_outputs, n_units)) < 0.2
    bias = rng.normal(size=n_outputs)
    X = (rng.random((n, n_units)) < alpha).astype(np.float64)
    Y = X @ theta.T + bias + noise * rng.normal(size=(n, n_outputs))
    return X, Y, theta, bias
