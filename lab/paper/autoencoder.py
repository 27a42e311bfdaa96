"""Paper Fig. 3 (a, b): the fully connected autoencoders FCDNN-8 and FCDNN-16, trained here.

The paper trains them on MNIST, which cannot be fetched here; scikit-learn ships the 8 x 8 digits set
(1,797 images) offline, so that is the data. Inputs are scaled to unit L2 norm (the paper's
Assumption 1, ||x|| <= 1) and every layer, the last included, is Linear + ReLU (Assumption 2: a
1-Lipschitz activation with sigma(0) = 0; the targets are non-negative, so a ReLU output loses nothing).
The paper's layer widths were lost with its formulas; these halve MNIST's ratios for 64 inputs:

    FCDNN-8   64 -> 128 -> 64 -> 32 -> 16, and the mirror back to 64        (8 Linear layers)
    FCDNN-16  64 -> 128 -> 112 -> ... -> 16 (steps of 16), and the mirror   (16 Linear layers)

Pruning uses the runtime's own `coinfer.pruning.Pruner` (per-layer magnitude by default), so the
curve is what the split runtime would do to these layers.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

ENCODER_WIDTHS = {
    "FCDNN-8": (128, 64, 32, 16),
    "FCDNN-16": (128, 112, 96, 80, 64, 48, 32, 16),
}
INPUT_DIM = 64


def load_digits_unit(test_fraction: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, test) digits as float32 rows of unit L2 norm; a fixed shuffle so runs agree."""
    from sklearn.datasets import load_digits

    x = load_digits().data.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    x = torch.from_numpy(x[order])
    return x[n_test:], x[:n_test]


def build_autoencoder(name: str, seed: int = 0) -> nn.Sequential:
    """Linear + ReLU layers: the encoder's widths, then the same in reverse back to the input."""
    widths = ENCODER_WIDTHS[name]
    dims = (INPUT_DIM, *widths, *reversed(widths[:-1]), INPUT_DIM)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for d_in, d_out in zip(dims, dims[1:]):
        # No bias: the paper's FC DNN (Section III-A) is sigma(W h) layer by layer, which is what
        # Theorem III.1 bounds; ReLU stacks this deep need He initialisation to train at all.
        lin = nn.Linear(d_in, d_out, bias=False)
        nn.init.kaiming_uniform_(lin.weight, nonlinearity="relu")
        layers += [lin, nn.ReLU()]
    return nn.Sequential(*layers)


def train_autoencoder(model: nn.Sequential, x: torch.Tensor, epochs: int = 300, batch: int = 128,
                      lr: float = 2e-3, seed: int = 0) -> list[float]:
    """Adam on the reconstruction MSE; returns the loss of each epoch (full training set)."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # Halving the rate twice settles the small net; the schedule is part of the recipe, not tuned per run.
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [epochs // 2, 3 * epochs // 4], 0.5)
    history = []
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[idx]), x[idx])
            loss.backward()
            opt.step()
        sched.step()
        with torch.no_grad():
            history.append(float(nn.functional.mse_loss(model(x), x)))
    model.eval().requires_grad_(False)
    return history


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def theorem_bound(layers: dict[str, nn.Linear], dense: dict[str, torch.Tensor], x_norm: float = 1.0) -> float:
    """Theorem III.1's bound on ||y - y_hat||_2 for an input of norm x_norm (bias-free, 1-Lipschitz sigma
    with sigma(0) = 0): sum_l ||W_l - W_hat_l|| prod_{i<l} ||W_i|| prod_{i>l} ||W_hat_i||, spectral norms.

    It follows from ||h_l - h_hat_l|| <= ||W_l - W_hat_l|| ||h_{l-1}|| + ||W_hat_l|| ||h_{l-1} - h_hat_{l-1}||
    and ||h_l|| <= ||W_l|| ||h_{l-1}||, so every measured point must lie below it.
    """
    names = list(layers)   # in forward order: nn.Sequential registers them so
    spec = lambda w: float(torch.linalg.matrix_norm(w.double(), ord=2))   # noqa: E731
    full = [spec(dense[n]) for n in names]
    pruned = [spec(layers[n].weight.detach()) for n in names]
    diff = [spec(layers[n].weight.detach() - dense[n]) for n in names]
    total = 0.0
    for l in range(len(names)):
        before = 1.0
        for i in range(l):
            before *= full[i]
        after = 1.0
        for i in range(l + 1, len(names)):
            after *= pruned[i]
        total += diff[l] * before * after
    return total * x_norm


def autoencoder_curve(model: nn.Sequential, x: torch.Tensor, ratios, method: str = "magnitude", seed: int = 0):
    """Fig. 3 (a, b): prune every layer to each kept ratio; distortions on the (unit-norm) inputs x."""
    from coinfer.lab.paper.distortion import prune_curve

    layers = linear_layers(model)
    x_norm = float(x.norm(dim=1).max())

    @torch.no_grad()
    def outputs() -> torch.Tensor:
        return model(x)

    return prune_curve(layers, outputs, ratios, method, seed,
                       bound=lambda dense: theorem_bound(layers, dense, x_norm))
