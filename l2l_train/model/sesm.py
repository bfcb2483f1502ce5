"""SESM: stage-adaptive gated conditioning of the visual encoder (DESIGN.md section 4).

For each encoder stage i with tokens V_i (B, N, C), N = h*w on the stage grid:

- semantic stream S_i: pixel-word attention from V_i to the word features (LAVT's PWAM);
- structural stream R_i from the prior field P_i (the prior map pooled to the stage grid and
  embedded): a per-position linear projection (shallow stages, strict spatial correspondence)
  or cross-attention from V_i to the flattened field (deep stages, relational reasoning);
- modality gating G_i = a_sem * S_i + a_str * R_i, (a_sem, a_str) a per-token softmax;
- gated residual V_i' = V_i + sigmoid(g(V_i, G_i)) * G_i, token-wise.

The Baseline (``model.sesm.enabled: false``) keeps the semantic stream and the gated residual,
with G_i = S_i, so the two differ in SESM alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from l2l_train.config import SESMConfig
from l2l_train.model.encoder import map_to_tokens

# (a_sem, a_str) of the non-learned gating options (paper Table 4).
# Channels of the 2-D position code the pixel-word attention adds to its visual tokens.
POSITION_DIM = 32
CONSTANT_MODALITY_WEIGHTS = {"fixed": (0.5, 0.5), "semantic": (1.0, 0.0), "structural": (0.0, 1.0)}


def token_instance_norm(tokens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Instance norm over tokens: each channel of each sample to zero mean, unit variance
    across its N tokens (LAVT's ``InstanceNorm1d``, affine-free).

    Shapes: tokens (B, N, C). Returns: (B, N, C).
    """
    mean = tokens.mean(dim=1, keepdim=True)
    var = tokens.var(dim=1, unbiased=False, keepdim=True)
    return (tokens - mean) / torch.sqrt(var + eps)


def masked_word_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, word_mask: torch.Tensor
) -> torch.Tensor:
    """Single-head attention from pixels to words, softmax over real words only.

    Shapes: query (B, N, D), keys (B, T, D), values (B, T, Dv), word_mask (B, T) bool with at
    least one True per row. Returns: (B, N, Dv), weights softmax(q k^T / sqrt(D)) over words.
    """
    attended = F.scaled_dot_product_attention(
        query[:, None], keys[:, None], values[:, None], attn_mask=word_mask[:, None, None, :]
    )
    return attended[:, 0]


def sincos_2d(
    grid: tuple[int, int],
    dim: int,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """2-D sine-cosine position code of the cell centres of a grid, in coordinates normalised
    to [0, 1] (DETR's normalised variant), so a location has one code at every stage and
    input size.

    Shapes: ``dim`` a multiple of 4. Returns: (h*w, dim), row-major cells, channels
    [sin(y f), cos(y f), sin(x f), cos(x f)] with f_k = 2 pi / 10000**(k / (dim / 4)).
    """
    if dim % 4:
        raise ValueError(f"sincos_2d needs dim a multiple of 4, got {dim}")
    quarter = dim // 4
    freqs = 2 * math.pi / 10000 ** (torch.arange(quarter, device=device) / quarter)
    ys = (torch.arange(grid[0], device=device) + 0.5) / grid[0]
    xs = (torch.arange(grid[1], device=device) + 0.5) / grid[1]
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    y_angles = y.reshape(-1, 1) * freqs
    x_angles = x.reshape(-1, 1) * freqs
    code = torch.cat([y_angles.sin(), y_angles.cos(), x_angles.sin(), x_angles.cos()], dim=1)
    return code.to(dtype) if dtype is not None else code


def pool_prior_to_grid(prior: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The prior field at a stage grid: each cell the mean foreground probability under it,
    so soft priors keep their uncertainty and thin structures are not dropped.

    Shapes: prior (B, 1, H, W) in [0, 1], same frame as the image. Returns: (B, 1, h, w).
    """
    return F.adaptive_avg_pool2d(prior, grid)


def multi_head_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """Scaled dot-product attention of already projected queries, keys and values, split into
    ``heads`` heads and merged back.

    Shapes: query (B, N, C), key and value (B, M, C), C a multiple of ``heads``.
    Returns: (B, N, C).
    """
    batch, length, channels = query.shape

    def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, heads, L, C / heads)
        return x.view(x.shape[0], x.shape[1], heads, channels // heads).transpose(1, 2)

    attended = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return attended.transpose(1, 2).reshape(batch, length, channels)


class PixelWordAttention(nn.Module):
    """Semantic stream S_i: LAVT's pixel-word attention module.

    Each visual token attends over the words (instance-normalised query, masked softmax),
    and the attended language feature multiplies a projection of the token.
    """

    def __init__(self, dim: int, word_dim: int) -> None:
        super().__init__()
        self.position = nn.Linear(POSITION_DIM, dim)
        self.visual = nn.Sequential(nn.Linear(dim, dim), nn.GELU())
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(word_dim, dim)
        self.value = nn.Linear(word_dim, dim)
        self.out = nn.Linear(dim, dim)
        self.fuse = nn.Sequential(nn.Linear(dim, dim), nn.GELU())

    def forward(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        words: torch.Tensor,
        word_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Shapes: tokens (B, N, C) on ``grid``, words (B, T, D), word_mask (B, T) bool.
        Returns: (B, N, C)."""
        code = sincos_2d(grid, POSITION_DIM, device=tokens.device, dtype=tokens.dtype)
        tokens = tokens + self.position(code)
        query = token_instance_norm(self.query(tokens))
        language = masked_word_attention(query, self.key(words), self.value(words), word_mask)
        language = token_instance_norm(self.out(language))
        return self.fuse(self.visual(tokens) * language)


class PriorField(nn.Module):
    """The prior field P_i at a stage grid, embedded to ``prior_dim`` channels.

    A pair without a prior gets an all-zero map plus a learned "absent" embedding, so the
    model can tell "no prior" from "the prior says background everywhere".
    """

    def __init__(self, prior_dim: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Conv2d(1, prior_dim, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(prior_dim, prior_dim, kernel_size=1),
        )
        self.absent = nn.Parameter(torch.empty(prior_dim))
        nn.init.normal_(self.absent, std=0.02)

    def forward(
        self, prior: torch.Tensor | None, present: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Shapes: prior (B, 1, H, W) in [0, 1] or None (all absent), present (B,) bool.

        Returns: field tokens (B, h*w, prior_dim).
        """
        absent = (~present).to(self.absent.dtype)[:, None, None, None]
        if prior is None:
            field = self.absent.new_zeros(present.shape[0], 1, *grid)
        else:
            field = pool_prior_to_grid(prior.to(self.absent.dtype), grid) * (1 - absent)
        features = self.embed(field) + absent * self.absent[None, :, None, None]
        return map_to_tokens(features)


class LinearStructure(nn.Module):
    """Structural stream R_i for shallow stages: each token gets a linear projection of the
    prior field at its own position."""

    def __init__(self, dim: int, prior_dim: int) -> None:
        super().__init__()
        self.project = nn.Linear(prior_dim, dim)

    def forward(
        self, tokens: torch.Tensor, field: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Shapes: tokens (B, N, C), field (B, N, P). Returns: (B, N, C).

        ``tokens`` and ``grid`` are unused; the signature is :class:`AttentionStructure`'s so
        a stage calls either stream the same way.
        """
        return self.project(field)


class AttentionStructure(nn.Module):
    """Structural stream R_i for deep stages: multi-head cross-attention from the visual
    tokens to the flattened prior field.

    Queries and keys carry a 2-D position code: without it every field cell would look
    alike except for its prior value, and a token could not relate itself to *where* the
    prior mass is.
    """

    def __init__(self, dim: int, prior_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(prior_dim, dim)
        self.value = nn.Linear(prior_dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, tokens: torch.Tensor, field: torch.Tensor, grid: tuple[int, int]
    ) -> torch.Tensor:
        """Shapes: tokens (B, N, C), field (B, N, P), N = h*w. Returns: (B, N, C)."""
        channels = tokens.shape[-1]
        code = {"device": tokens.device, "dtype": tokens.dtype}
        query = self.query(self.norm(tokens) + sincos_2d(grid, channels, **code))
        key = self.key(field + sincos_2d(grid, field.shape[-1], **code))
        return self.out(multi_head_attention(query, key, self.value(field), self.num_heads))


class ModalityGate(nn.Module):
    """Per-token modality weights (a_sem, a_str), summing to 1.

    ``dynamic``: softmax of an MLP on [V, S, R] (it sees both streams, so it can lean away
    from a prior that is absent or disagrees with the expression). ``fixed`` / ``semantic``
    / ``structural``: the constants of ``CONSTANT_MODALITY_WEIGHTS``.
    """

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        self.mode = mode
        if mode == "dynamic":
            self.mlp = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 2))
        elif mode in CONSTANT_MODALITY_WEIGHTS:
            weights = torch.tensor(CONSTANT_MODALITY_WEIGHTS[mode])
            self.register_buffer("constant", weights, persistent=False)
        else:
            raise ValueError(
                f"model.sesm.gating: expected 'dynamic' or one of "
                f"{sorted(CONSTANT_MODALITY_WEIGHTS)}, got {mode!r}"
            )

    def forward(
        self, tokens: torch.Tensor, semantic: torch.Tensor | None, structural: torch.Tensor | None
    ) -> torch.Tensor:
        """Shapes: tokens, semantic, structural (B, N, C) (a stream may be None when its
        constant weight is 0). Returns: (B, N, 2) weights (a_sem, a_str)."""
        if self.mode == "dynamic":
            return self.mlp(torch.cat([tokens, semantic, structural], dim=-1)).softmax(dim=-1)
        return self.constant.to(tokens.dtype).expand(*tokens.shape[:2], 2)


def mix_streams(
    weights: torch.Tensor, semantic: torch.Tensor | None, structural: torch.Tensor | None
) -> torch.Tensor:
    """G = a_sem * S + a_str * R, skipping a stream that was not built (its weight is 0).

    Shapes: weights (B, N, 2), semantic / structural (B, N, C) or None. Returns: (B, N, C).
    """
    streams = [(0, semantic), (1, structural)]
    parts = [weights[..., k : k + 1] * stream for k, stream in streams if stream is not None]
    return torch.stack(parts).sum(dim=0)


class GatedResidual(nn.Module):
    """V' = V + sigmoid(g(V, G)) * G, with g an MLP on the token and its guidance, so each
    token and channel decides how much guidance to take and the pretrained features pass
    through where it takes none."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(
        self, tokens: torch.Tensor, guidance: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shapes: tokens, guidance (B, N, C). Returns: V' (B, N, C) and the gate (B, N, C)."""
        gate = torch.sigmoid(self.gate(torch.cat([tokens, guidance], dim=-1)))
        return tokens + gate * guidance, gate


@dataclass(frozen=True)
class StageGates:
    """One stage's gate values from a forward pass, detached (for logging and figures).

    modality: (B, N, 2) per-token (a_sem, a_str), None in the Baseline (no structural stream).
    residual: (B, N) the residual gate sigmoid(g(V, G)) averaged over channels.
    """

    modality: torch.Tensor | None
    residual: torch.Tensor


class StageConditioner(nn.Module):
    """Conditioning of one encoder stage: streams, modality gate, gated residual.

    ``semantic`` / ``structural`` are None when not built (the Baseline has no structural
    stream; the ``semantic``/``structural`` gating options build only their stream);
    ``modality`` is None in the Baseline, where G = S.
    """

    def __init__(
        self,
        dim: int,
        semantic: PixelWordAttention | None,
        structural: LinearStructure | AttentionStructure | None,
        modality: ModalityGate | None,
    ) -> None:
        super().__init__()
        self.semantic = semantic
        self.structural = structural
        self.modality = modality
        self.residual = GatedResidual(dim)

    def forward(
        self,
        tokens: torch.Tensor,
        grid: tuple[int, int],
        words: torch.Tensor,
        word_mask: torch.Tensor,
        field: torch.Tensor | None,
    ) -> tuple[torch.Tensor, StageGates]:
        """Shapes: tokens (B, N, C) on ``grid`` (h, w), words (B, T, D), word_mask (B, T) bool,
        field (B, N, P) prior-field tokens or None when no structural stream is built.

        Returns: conditioned tokens (B, N, C) and the stage's detached gate values.
        """
        semantic = None if self.semantic is None else self.semantic(tokens, grid, words, word_mask)
        structural = None if self.structural is None else self.structural(tokens, field, grid)
        if self.modality is None:
            weights, guidance = None, semantic
        else:
            weights = self.modality(tokens, semantic, structural)
            guidance = mix_streams(weights, semantic, structural)
        tokens, gate = self.residual(tokens, guidance)
        gates = StageGates(
            modality=None if weights is None else weights.detach(),
            residual=gate.detach().mean(dim=-1),
        )
        return tokens, gates


def uses_prior(cfg: SESMConfig) -> bool:
    """Whether the encoder has a structural stream (and so reads the prior) at all."""
    return cfg.enabled and cfg.gating != "semantic"


def build_stage_conditioners(
    dims: tuple[int, ...], num_heads: tuple[int, ...], word_dim: int, cfg: SESMConfig
) -> nn.ModuleList:
    """One conditioner per stage: SESM when ``cfg.enabled``, else the semantic-only Baseline.

    ``dims`` / ``num_heads`` per stage come from the visual encoder; ``word_dim`` from the text
    encoder; stage numbers in ``cfg.cross_attention_stages`` are 1-based.
    """
    with_semantic = not (cfg.enabled and cfg.gating == "structural")
    conditioners = []
    for stage, (dim, heads) in enumerate(zip(dims, num_heads, strict=True), start=1):
        semantic = PixelWordAttention(dim, word_dim) if with_semantic else None
        structural = None
        if uses_prior(cfg):
            structural = (
                AttentionStructure(dim, cfg.prior_dim, heads)
                if stage in cfg.cross_attention_stages
                else LinearStructure(dim, cfg.prior_dim)
            )
        modality = ModalityGate(dim, cfg.gating) if cfg.enabled else None
        conditioners.append(StageConditioner(dim, semantic, structural, modality))
    return nn.ModuleList(conditioners)
