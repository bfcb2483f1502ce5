"""The referring segmentor: Swin stages conditioned by SESM (or the semantic-only Baseline),
a BERT-family text encoder and an FPN decoder; :func:`build_segmentor` is its one builder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from l2l_train.config import ModelConfig, SESMConfig, TextConfig, VisualConfig
from l2l_train.model.context import GlobalContext
from l2l_train.model.counting import AxisCount
from l2l_train.model.decoder import FineHead, FPNDecoder
from l2l_train.model.encoder import ResNetStages, SwinStages, build_visual_encoder
from l2l_train.model.sesm import PriorField, StageGates, build_stage_conditioners, uses_prior
from l2l_train.model.text import TextEncoder, build_text_encoder


def prior_presence(
    prior: torch.Tensor | None,
    prior_present: torch.Tensor | None,
    batch: int,
    device: torch.device,
) -> torch.Tensor:
    """Which samples have a prior: all when ``prior_present`` is None and a prior is given,
    none when ``prior`` is None.

    Shapes: prior (B, 1, H, W) or None, prior_present (B,) bool or None. Returns: (B,) bool.
    """
    if prior is None:
        if prior_present is not None and bool(prior_present.any()):
            raise ValueError("prior_present marks samples as having a prior, but prior is None")
        return torch.zeros(batch, dtype=torch.bool, device=device)
    if prior.dim() != 4 or prior.shape[:2] != (batch, 1):
        raise ValueError(f"prior: expected shape ({batch}, 1, H, W), got {tuple(prior.shape)}")
    if prior_present is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    if prior_present.shape != (batch,) or prior_present.dtype != torch.bool:
        raise ValueError(
            f"prior_present: expected a bool tensor of shape ({batch},), "
            f"got {prior_present.dtype} {tuple(prior_present.shape)}"
        )
    return prior_present


class Segmentor(nn.Module):
    """Image + expression (+ optional prior) -> foreground logits (and, when asked, each
    stage's :class:`~l2l_train.model.sesm.StageGates`)."""

    def __init__(
        self,
        visual: SwinStages | ResNetStages,
        text: TextEncoder,
        conditioners: nn.ModuleList,
        prior_field: PriorField | None,
        decoder: FPNDecoder,
        head: FineHead,
        context: nn.ModuleDict | None = None,
        counting: nn.ModuleDict | None = None,
    ) -> None:
        """``context``, ``counting``: a :class:`~l2l_train.model.context.GlobalContext`, an
        :class:`~l2l_train.model.counting.AxisCount` per stage that has one, keyed by the
        0-based stage index as a string."""
        super().__init__()
        self.visual = visual
        self.text = text
        self.conditioners = conditioners
        self.prior_field = prior_field
        self.decoder = decoder
        self.head = head
        self.context = nn.ModuleDict() if context is None else context
        self.counting = nn.ModuleDict() if counting is None else counting

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        prior: torch.Tensor | None = None,
        prior_present: torch.Tensor | None = None,
        *,
        words: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
        return_gates: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[StageGates, ...]]:
        """Shapes: images (B, 3, H, W) ImageNet-normalised; input_ids, attention_mask (B, T);
        prior (B, 1, H', W') foreground probabilities in [0, 1] in the image's frame (any
        resolution) or None; prior_present (B,) bool, False for pairs without a prior;
        words (B, T, D), word_mask (B, T): precomputed text features instead of token ids.

        Returns: foreground logits (B, 1, H, W); with ``return_gates``, also one
        :class:`~l2l_train.model.sesm.StageGates` per stage (detached), as ``(logits, gates)``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
        batch = images.shape[0]
        if words is None:
            if input_ids.shape[0] != batch or attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"input_ids {tuple(input_ids.shape)} and attention_mask "
                    f"{tuple(attention_mask.shape)}: expected both ({batch}, T)"
                )
            words, word_mask = self.text(input_ids, attention_mask)
        present = prior_presence(prior, prior_present, batch, images.device)
        gates: list[StageGates] = []

        def condition(stage: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
            field = None if self.prior_field is None else self.prior_field(prior, present, grid)
            tokens, stage_gates = self.conditioners[stage](tokens, grid, words, word_mask, field)
            gates.append(stage_gates)
            if str(stage) in self.context:
                tokens = self.context[str(stage)](tokens, grid)
            if str(stage) in self.counting:
                tokens = self.counting[str(stage)](tokens, grid)
            return tokens

        features = self.decoder(self.visual(images, condition))  # (B, dim, H/4, W/4)
        logits = self.head(features, images, self._full_resolution_prior(prior, present, images))
        return (logits, tuple(gates)) if return_gates else logits

    def _full_resolution_prior(
        self, prior: torch.Tensor | None, present: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor | None:
        """(B, 2, H, W): the prior in the input frame (zeros where absent) and its presence
        flag, for the head; None when the model does not read priors."""
        if self.prior_field is None:
            return None
        flag = present.to(images.dtype)[:, None, None, None].expand(-1, 1, *images.shape[-2:])
        if prior is None:
            return torch.cat([torch.zeros_like(flag), flag], dim=1)
        prior = F.interpolate(
            prior.to(images.dtype), size=images.shape[-2:], mode="bilinear", align_corners=False
        )
        return torch.cat([prior * flag, flag], dim=1)


def build_segmentor(cfg: ModelConfig, *, load_weights: bool = True) -> Segmentor:
    """The segmentor of ``cfg``: SESM when ``cfg.sesm.enabled``, else the Baseline.

    ``load_weights=False`` builds the pretrained encoders from their ``config.json`` only, for
    restoring a whole-model checkpoint or counting parameters (works under
    ``torch.device("meta")``).
    """
    visual = build_visual_encoder(cfg.visual, load_weights=load_weights)
    text = build_text_encoder(cfg.text, load_weights=load_weights)
    conditioners = build_stage_conditioners(visual.dims, visual.num_heads, text.dim, cfg.sesm)
    prior_field = PriorField(cfg.sesm.prior_dim) if uses_prior(cfg.sesm) else None
    decoder = FPNDecoder(visual.dims, cfg.decoder_dim)
    head = FineHead(
        cfg.decoder_dim, prior_channels=2 if prior_field is not None else 0, fine_dim=cfg.fine_dim
    )
    context = nn.ModuleDict(
        {
            str(stage - 1): GlobalContext(visual.dims[stage - 1], visual.num_heads[stage - 1])
            for stage in cfg.context_stages
        }
    )
    counting = nn.ModuleDict(
        {
            str(stage - 1): AxisCount(visual.dims[stage - 1], cfg.count_marks)
            for stage in cfg.count_stages
        }
    )
    return Segmentor(visual, text, conditioners, prior_field, decoder, head, context, counting)


def count_parameters(module: nn.Module, *, trainable_only: bool = True) -> int:
    """Number of parameters (only those requiring gradients, by default)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def paper_size_config(text_path: str, *, sesm: bool = True) -> ModelConfig:
    """The paper's full size from params: Swin-B (ImageNet-22k layout: embed 128, depths
    2-2-18-2, heads 4-8-16-32, window 12), the BERT-family model at ``text_path`` fine-tuned,
    LAVT's 512-channel decoder. For parameter counts and memory checks without weights; real
    runs point ``model.visual.path`` at a Swin-B folder instead."""
    return ModelConfig(
        visual=VisualConfig(
            embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12
        ),
        text=TextConfig(path=text_path, trainable=True),
        sesm=SESMConfig(enabled=sesm),
        decoder_dim=512,
    )
