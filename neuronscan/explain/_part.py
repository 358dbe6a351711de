"""Zhang et al.'s explainer network (2019, "Unsupervised Learning of Neural Networks to Explain Neural Networks"):
an auto-encoder on a conv layer's feature maps whose encoder filters are *interpretable* — each is pushed to
fire on one part, at one place per image, by the part-template loss of interpretable CNNs (Zhang, Wu, Zhu 2018) —
and whose decoder reconstructs the layer's features, trained by distillation so the model's outputs computed
from the reconstruction stay those of the real features.

Shapes: the layer's map ``f`` is ``(B, C, h, w)``; the explainer has ``width`` interpretable filters and
``ordinary`` ordinary ones (Zhang's second track, for what no part explains; 0 by default):

    e        = ReLU(conv_k(f))                    (B, width + ordinary, h, w)
    parts    = e[:, :width]                       the interpretable filters' maps (the audited components)
    masked   = parts * M_mu(parts)                each map masked by the template of its own peak mu (below)
    f_hat    = ReLU(conv_1(ReLU(conv_3([masked, e[:, width:]]))))      (B, C, h, w)

Templates (n = max(h, w), L1 distance in grid cells): a positive template for every position mu,
``T_mu(i) = tau * max(1 - beta * |i - mu|_1 / n, -1)``, and a negative one ``T_-(i) = -tau``; priors
``p(T_mu) = alpha / n^2``, ``p(T_-) = 1 - alpha`` (Zhang: ``alpha = n^2 / (1 + n^2)``, ``beta = 4``,
``tau = 0.5 / n^2``). The mask of a map is ``max(1 - beta * |i - mu_hat|_1 / n, 0)`` at its argmax ``mu_hat`` (the
positive part of its template; the forward pass of an interpretable conv layer).

Part-template loss of one filter over a batch X of maps (each map normalised by the filter's mean activation over
the batch, held constant, so that ``tau`` means the same on any layer):

    p(x | T) = exp(tr(x . T)) / sum_{x' in X} exp(tr(x' . T)),   p(x) = sum_T p(T) p(x | T)
    loss     = -MI(X; T) = -sum_T p(T) sum_x p(x | T) log(p(x | T) / p(x))

which is low when every image's map matches one positive template well (one peak) or the negative template (no
activation), and the images that match are told apart (Zhang et al. decompose the same quantity as
``-H(T) + H(T' | X) + sum_x p(T+, x) H(T+ | X = x)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PartExplainer", "part_template_loss", "template_mask", "positive_templates"]


def _grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], -1).to(dtype)  # (h*w, 2)


def positive_templates(h: int, w: int, *, beta: float = 4.0, tau: float | None = None, device=None,
                       dtype=torch.float32) -> torch.Tensor:
    """``(h*w, h*w)``: row mu is ``T_mu`` flattened, ``tau * max(1 - beta * |i - mu|_1 / n, -1)``."""
    n = max(h, w)
    tau = 0.5 / (h * w) if tau is None else float(tau)
    g = _grid(h, w, device, dtype)
    dist = (g[:, None, :] - g[None, :, :]).abs().sum(-1)
    return tau * torch.clamp(1.0 - beta * dist / n, min=-1.0)


def template_mask(maps: torch.Tensor, *, beta: float = 4.0) -> torch.Tensor:
    """The mask ``max(1 - beta * |i - mu_hat|_1 / n, 0)`` of every map ``(B, F, h, w)`` at its own argmax (no
    gradient flows through the mask)."""
    b, f, h, w = maps.shape
    n = max(h, w)
    with torch.no_grad():
        idx = maps.flatten(2).argmax(-1)  # (B, F)
        my = torch.div(idx, w, rounding_mode="floor").float()[..., None, None]
        mx = torch.remainder(idx, w).float()[..., None, None]
        ys = torch.arange(h, device=maps.device).float().view(1, 1, h, 1)
        xs = torch.arange(w, device=maps.device).float().view(1, 1, 1, w)
        dist = (ys - my).abs() + (xs - mx).abs()
        return torch.clamp(1.0 - beta * dist / n, min=0.0)


def part_template_loss(maps: torch.Tensor, *, beta: float = 4.0, tau: float | None = None,
                       alpha: float | None = None, templates: torch.Tensor | None = None) -> torch.Tensor:
    """``-MI(X; T)`` averaged over the filters of ``maps`` ``(B, F, h, w)`` (non-negative maps).

    Each filter's maps are divided by their mean over the batch and positions (a constant: no gradient), so the
    loss does not depend on the layer's scale. ``templates``: `positive_templates` precomputed for speed.
    """
    b, f, h, w = maps.shape
    n2 = h * w
    tau = 0.5 / n2 if tau is None else float(tau)
    alpha = n2 / (1.0 + n2) if alpha is None else float(alpha)
    if templates is None:
        templates = positive_templates(h, w, beta=beta, tau=tau, device=maps.device, dtype=maps.dtype)
    x = maps.flatten(2)  # (B, F, n2)
    norm = x.detach().mean(dim=(0, 2), keepdim=True).clamp_min(1e-6)
    x = x / norm
    s_pos = x @ templates.to(x.dtype).t()  # (B, F, n2): tr(x . T_mu)
    s_neg = -tau * x.sum(-1, keepdim=True)  # (B, F, 1)
    s = torch.cat([s_pos, s_neg], -1)  # (B, F, n2 + 1)
    log_px_t = s - torch.logsumexp(s, dim=0, keepdim=True)  # log p(x | T), normalised over the batch
    log_prior = torch.cat([torch.full((n2,), math.log(alpha / n2), device=maps.device, dtype=x.dtype),
                           torch.full((1,), math.log(max(1.0 - alpha, 1e-12)), device=maps.device, dtype=x.dtype)])
    log_px = torch.logsumexp(log_prior + log_px_t, dim=-1, keepdim=True)  # log p(x), (B, F, 1)
    mi = (log_prior.exp() * (log_px_t.exp() * (log_px_t - log_px)).sum(0)).sum(-1)  # (F,)
    return -mi.mean()


class PartExplainer(nn.Module):
    """The explainer of one conv layer: interpretable encoder filters (+ optional ordinary ones) and a decoder.

    Args:
        n_channels: C, the layer's channels.
        width: interpretable filters (``explain.width`` × C, rounded).
        ordinary: ordinary filters (``explain.part.ordinary_width`` × C), not template-constrained, not audited.
        kernel_size: the encoder's kernel (odd).
        hidden: the decoder's hidden channels (default C).
        beta: the templates' fall-off (also of the mask).
        mask: mask each interpretable map by its template before decoding.
        seed: initialises the weights (independent of torch's global generator).
    """

    def __init__(self, n_channels: int, width: int, *, ordinary: int = 0, kernel_size: int = 3,
                 hidden: int | None = None, beta: float = 4.0, mask: bool = True, seed: int = 0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.n_channels, self.width, self.ordinary = int(n_channels), int(width), int(ordinary)
        self.beta, self.use_mask = float(beta), bool(mask)
        hidden = int(hidden or n_channels)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.encoder = nn.Conv2d(self.n_channels, self.width + self.ordinary, kernel_size,
                                     padding=kernel_size // 2)
            self.decoder = nn.Sequential(
                nn.Conv2d(self.width + self.ordinary, hidden, 3, padding=1), nn.ReLU(),
                nn.Conv2d(hidden, self.n_channels, 1), nn.ReLU(),
            )

    def encode(self, f: torch.Tensor) -> torch.Tensor:
        """The interpretable filters' maps ``(B, width, h, w)`` (non-negative; before the mask)."""
        return torch.relu(self.encoder(f))[:, : self.width]

    def forward(self, f: torch.Tensor) -> dict[str, torch.Tensor]:
        e = torch.relu(self.encoder(f))
        parts, ordinary = e[:, : self.width], e[:, self.width :]
        masked = parts * template_mask(parts, beta=self.beta) if self.use_mask else parts
        recon = self.decoder(torch.cat([masked, ordinary], 1))
        return {"parts": parts, "masked": masked, "ordinary": ordinary, "recon": recon}

    def decode_tracks(self, masked: torch.Tensor, ordinary: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([masked, ordinary], 1))
