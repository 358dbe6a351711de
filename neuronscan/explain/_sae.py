"""Sparse autoencoders over a layer's per-image statistics: TopK (with the AuxK loss for dead components) and
JumpReLU (a learned threshold per component, trained through a straight-through estimator with an L0 penalty).

``x`` is one row per image: a layer statistic such as ``conv4:mean`` (the probe's activation parts). Inputs are
normalised once, from the training data: ``x_n = (x - mean) / scale`` with one scalar ``scale`` (the root mean
squared deviation per unit), so that the learning rate and the JumpReLU threshold mean the same on any layer.
Then

    pre = W_enc (x_n - b_dec) + b_enc          (width components)
    z   = TopK(ReLU(pre))                       (k largest kept, the rest 0)       activation: topk
    z   = pre * H(pre - theta)                  (theta = exp(log_theta) > 0)     activation: jumprelu
    x_n_hat = W_dec z + b_dec                   (columns of W_dec kept at unit norm)

Losses (on normalised inputs, averaged over the batch):

- reconstruction ``||x_n - x_n_hat||^2 / K`` (K units);
- TopK: AuxK (Gao et al. 2024) — the residual ``x_n - x_n_hat`` reconstructed by the ``aux_k`` largest
  pre-activations of the *dead* components (none fired on the last ``dead_after`` images), weighted by
  ``aux_coefficient``, normalised by the residual's own energy;
- JumpReLU (Rajamanoharan et al. 2024): ``l0_coefficient * sum_j H(pre_j - theta_j)``. H has no useful gradient,
  so its pseudo-derivative with respect to theta is the rectangle kernel of ``bandwidth`` ε:
  ``dH/dθ = -(1/ε) 1[|pre - θ| < ε/2]`` and ``d(pre H)/dθ = -(θ/ε) 1[|pre - θ| < ε/2]``; the gradient with respect
  to ``pre`` is the ordinary one (``H`` for the activation, 0 for the L0 term).

After each optimiser step the decoder's columns are put back on the unit sphere and, before it, the part of
their gradient parallel to them is removed (as saev and Anthropic's SAEs do), so a component's scale lives in its
activation, not in its decoder direction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SparseAutoencoder", "sae_loss", "normalise_decoder", "remove_parallel_grad", "fit_normaliser"]


class _StepSTE(torch.autograd.Function):
    """H(pre - theta) forward; gradient only to theta, by the rectangle kernel of width ``bandwidth``."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - theta).abs() < eps / 2).to(pre.dtype)
        g_theta = (-(1.0 / eps) * kernel * grad).sum(0)
        return torch.zeros_like(pre), g_theta, None


class _JumpReLUSTE(torch.autograd.Function):
    """pre * H(pre - theta) forward; gradient H to pre and the rectangle-kernel estimate to theta."""

    @staticmethod
    def forward(ctx, pre, theta, bandwidth: float):
        ctx.save_for_backward(pre, theta)
        ctx.bandwidth = bandwidth
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, theta = ctx.saved_tensors
        eps = ctx.bandwidth
        on = (pre > theta).to(pre.dtype)
        kernel = ((pre - theta).abs() < eps / 2).to(pre.dtype)
        g_theta = (-(theta / eps) * kernel * grad).sum(0)
        return grad * on, g_theta, None


class SparseAutoencoder(nn.Module):
    """An SAE of ``n_units`` inputs and ``width`` components.

    Args:
        n_units: K, the layer's units.
        width: components (``explain.width`` × K, rounded).
        activation: ``"topk"`` or ``"jumprelu"``.
        k: components kept per image (TopK).
        threshold: initial JumpReLU threshold (normalised units).
        bandwidth: ε of the straight-through estimator (JumpReLU).
        mean, scale: the input normalisation (`fit_normaliser`); stored as buffers, so a checkpoint carries it.
        seed: initialises the weights (decoder columns uniform on the sphere, encoder its transpose).

    Buffers: ``mean`` (K,), ``scale`` (), ``since_fired`` (width,): images seen since each component last fired
    (for AuxK and the dead count during training); part of the state dict, so a resumed run continues exactly.
    """

    def __init__(self, n_units: int, width: int, *, activation: str = "topk", k: int = 8, threshold: float = 0.5,
                 bandwidth: float = 0.1, mean: torch.Tensor | None = None, scale: float | torch.Tensor = 1.0,
                 seed: int = 0):
        super().__init__()
        if activation not in ("topk", "jumprelu"):
            raise ValueError(f"activation must be topk or jumprelu, got {activation!r}")
        if width < 1 or n_units < 1:
            raise ValueError(f"width and n_units must be positive, got {width}, {n_units}")
        self.n_units, self.width, self.activation = int(n_units), int(width), activation
        self.k = int(min(k, width))
        self.bandwidth = float(bandwidth)
        gen = torch.Generator().manual_seed(int(seed))
        w_dec = torch.randn(self.n_units, self.width, generator=gen)
        w_dec = w_dec / w_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.t().clone())
        self.b_enc = nn.Parameter(torch.zeros(self.width))
        self.b_dec = nn.Parameter(torch.zeros(self.n_units))
        if activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((self.width,), math.log(float(threshold))))
        self.register_buffer("mean", torch.zeros(self.n_units) if mean is None else torch.as_tensor(mean).float())
        self.register_buffer("scale", torch.as_tensor(float(scale), dtype=torch.float32))
        self.register_buffer("since_fired", torch.zeros(self.width, dtype=torch.long))

    # -- the maps ------------------------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def denormalise(self, x_n: torch.Tensor) -> torch.Tensor:
        return x_n * self.scale + self.mean

    def pre_activation(self, x_n: torch.Tensor) -> torch.Tensor:
        return (x_n - self.b_dec) @ self.W_enc.t() + self.b_enc

    @property
    def threshold(self) -> torch.Tensor | None:
        return self.log_threshold.exp() if self.activation == "jumprelu" else None

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.activation == "topk":
            values, index = torch.topk(pre, self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
        return _JumpReLUSTE.apply(pre, self.threshold, self.bandwidth)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Component activations ``(n, width)`` of raw inputs ``(n, K)`` (non-negative, sparse)."""
        return self.activate(self.pre_activation(self.normalise(x)))

    def decode_normalised(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec.t() + self.b_dec

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The reconstruction of the raw inputs from component activations."""
        return self.denormalise(self.decode_normalised(z))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x_n = self.normalise(x)
        pre = self.pre_activation(x_n)
        z = self.activate(pre)
        return {"x_n": x_n, "pre": pre, "z": z, "x_n_hat": self.decode_normalised(z)}

    @torch.no_grad()
    def update_fired(self, z: torch.Tensor) -> None:
        """Count images since each component last fired (call once per training batch)."""
        fired = (z > 0).any(0)
        self.since_fired += z.shape[0]
        self.since_fired[fired] = 0


def sae_loss(model: SparseAutoencoder, out: dict[str, torch.Tensor], *, aux_k: int | None = None,
             aux_coefficient: float = 1 / 32, dead_after: int = 0, l0_coefficient: float = 0.0) -> dict:
    """The training loss of a batch and its parts (``loss``, ``mse``, ``aux``, ``l0``) as tensors."""
    x_n, pre, z, x_hat = out["x_n"], out["pre"], out["z"], out["x_n_hat"]
    err = x_n - x_hat
    mse = err.pow(2).sum(-1).mean() / model.n_units
    parts = {"mse": mse, "aux": torch.zeros((), device=x_n.device), "l0": (z > 0).sum(-1).float().mean()}
    loss = mse
    if model.activation == "topk" and aux_k and dead_after > 0:
        dead = model.since_fired >= dead_after
        n_dead = int(dead.sum())
        if n_dead:
            k_aux = min(int(aux_k), n_dead)
            masked = pre.masked_fill(~dead, float("-inf"))
            values, index = torch.topk(masked, k_aux, dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, index, torch.relu(values))
            err_hat = z_aux @ model.W_dec.t()
            target = err.detach()
            aux = (target - err_hat).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean().clamp_min(1e-12)
            parts["aux"] = aux
            loss = loss + aux_coefficient * aux
    if model.activation == "jumprelu" and l0_coefficient > 0:
        steps = _StepSTE.apply(pre, model.threshold, model.bandwidth)
        loss = loss + l0_coefficient * steps.sum(-1).mean()
    parts["loss"] = loss
    return parts


@torch.no_grad()
def normalise_decoder(model: SparseAutoencoder) -> None:
    """Put every decoder column back on the unit sphere."""
    model.W_dec.div_(model.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))


@torch.no_grad()
def remove_parallel_grad(model: SparseAutoencoder) -> None:
    """Drop the part of each decoder column's gradient parallel to the column (it would only change its norm)."""
    if model.W_dec.grad is None:
        return
    w = model.W_dec
    g = model.W_dec.grad
    g.sub_(w * (g * w).sum(0, keepdim=True))


def fit_normaliser(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Per-unit mean and one scalar scale (root mean squared deviation per unit; 1 for constant data)."""
    mean = x.mean(0)
    scale = float((x - mean).pow(2).sum(-1).mean().div(x.shape[1]).sqrt())
    return mean, (scale if scale > 0 and math.isfinite(scale) else 1.0)
