"""Tiny Hugging Face transformers (5.24.0) models whose forward calls multi-scale deformable attention.

Five families, each with a factory `build_<family>(seed=0, ...)` and an input maker
`<family>_inputs(seed=0, batch=1, height=64, width=96)`: Deformable DETR, RT-DETR, RT-DETRv2,
Mask2Former and Grounding DINO. Everything is built from config classes (no hub access): tiny
ResNet / Swin backbones and, for Grounding DINO, a one-layer BERT text encoder over a 1100-token
vocabulary (the special ids 101, 102 and 1012 it looks for fit in it). `head=True` builds the
task model (`...ForObjectDetection`, `Mask2FormerForUniversalSegmentation`); its module paths
then start with `model.`.

The library's own initialisation leaves MSDA degenerate (see `redraw_weights`), so every factory
re-draws all weights from `seed`. `python -m examples.hf_models` prints the table below from live
calls, with the statistics of each call's inputs and output.

Where MSDA is called (base model at the defaults: d_model 32, 2 heads M, 16 channels per head D,
4 points P, 10 queries, 2 encoder + 2 decoder layers, a 64x96 image; N = batch):

================  =======================================================  =================================
family            first call site (`named_modules()` path)                 calls per forward
================  =======================================================  =================================
deformable_detr   encoder.layers.0.self_attn.attn                          4: encoder.layers.{0,1}.self_attn
                                                                           .attn, decoder.layers.{0,1}
                                                                           .encoder_attn.attn
rt_detr           decoder.layers.0.encoder_attn.attn                       2: decoder.layers.{0,1}
                                                                           .encoder_attn.attn (the AIFI
                                                                           encoder has plain attention)
rt_detr_v2        decoder.layers.0.encoder_attn (calls a function)         2: decoder.layers.{0,1}
                                                                           .encoder_attn
mask2former       pixel_level_module.decoder.encoder.layers.0.self_attn    2: ....encoder.layers.{0,1}
                  (calls a function)                                       .self_attn (none elsewhere)
grounding_dino    encoder.layers.0.deformable_layer.self_attn.attn         4: encoder.layers.{0,1}
                                                                           .deformable_layer.self_attn
                                                                           .attn, decoder.layers.{0,1}
                                                                           .encoder_attn.attn
================  =======================================================  =================================

With `head=True` every path gets a `model.` prefix.

The callables (`capture.call` / `export.plugins[].replace`):

* deformable_detr, rt_detr, grounding_dino: the nn.Module method
  `transformers.models.<pkg>.modeling_<pkg>:MultiScaleDeformableAttention.forward(self, value,
  value_spatial_shapes, value_spatial_shapes_list, level_start_index, sampling_locations,
  attention_weights, im2col_step)`, pkg = deformable_detr, rt_detr, grounding_dino (one class per
  package), called positionally. `value` f32 [N, S, M, D]; `value_spatial_shapes` int64 [L, 2]
  (H, W); `value_spatial_shapes_list` list of (H, W) python ints; `level_start_index` int64 [L];
  `sampling_locations` f32 [N, Lq, M, L, P, 2]; `attention_weights` f32 [N, Lq, M, L, P] (softmax
  over L*P); `im2col_step` int 64. Returns f32 [N, Lq, M*D]. Encoder and decoder calls have the
  same signature; Lq = S in the encoder, the number of queries in the decoder. Deformable DETR's
  decoder uses 2-d reference points, RT-DETR's and Grounding DINO's 4-d boxes (that changes how
  the module computes sampling_locations, not the call).
  deformable_detr / grounding_dino at the defaults: value [1, 510, 2, 16], spatial shapes
  [[16, 24], [8, 12], [4, 6], [2, 3]], level_start_index [0, 384, 480, 504], sampling_locations
  [1, 510, 2, 4, 4, 2] (decoder [1, 10, 2, 4, 4, 2]), result [1, 510, 32] (decoder [1, 10, 32]).
  rt_detr: value [1, 504, 2, 16], spatial shapes [[16, 24], [8, 12], [4, 6]], level_start_index
  [0, 384, 480], sampling_locations [1, 10, 2, 3, 4, 2], attention_weights [1, 10, 2, 3, 4].
* mask2former: the function `transformers.models.mask2former.modeling_mask2former:
  multi_scale_deformable_attention(value, value_spatial_shapes, sampling_locations,
  attention_weights)`, called positionally. `value_spatial_shapes` is a python list of (H, W)
  tuples (not a tensor), coarsest level first: [(2, 3), (4, 6), (8, 12)] at 64x96 (Swin strides
  32, 16, 8); there is no level_start_index argument (derive it: [0, 6, 30]). value
  [1, 126, 2, 16], sampling_locations [1, 126, 2, 3, 4, 2], attention_weights [1, 126, 2, 3, 4],
  result [1, 126, 32]. L = 3 and P = 4 are fixed by the library.
* rt_detr_v2: the function `transformers.models.rt_detr_v2.modeling_rt_detr_v2:
  multi_scale_deformable_attention_v2(value, value_spatial_shapes, sampling_locations,
  attention_weights, num_points_list, method)`, called positionally. `value_spatial_shapes` a
  python list of (H, W) [(16, 24), (8, 12), (4, 6)]; value [1, 504, 2, 16]; levels and points
  flattened: sampling_locations [N, Lq, M, L*P, 2] = [1, 10, 2, 12, 2], attention_weights
  [N, Lq, M, L*P] = [1, 10, 2, 12] (level-major, so a view as [N, Lq, M, L, P(, 2)] is exact when
  every level has P points, as here); `num_points_list` [4, 4, 4]; `method` "default" (bilinear,
  the plugin's; "discrete" would be nearest-pixel). No level_start_index ([0, 384, 480]).
  Result [1, 10, 32]. Both decoder calls pass the same num_points_list and method.

Other notes: Mask2FormerForUniversalSegmentation (`head=True`) needs scipy (its loss is built in
`__init__`). GroundingDinoForObjectDetection also returns `input_ids` (int64) among its outputs.
Grounding DINO's `max_text_len` is the prompt length (9), so no logits are padded with -inf.
"""

from __future__ import annotations

import importlib
import inspect
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

TEXT_VOCAB = 1100  # Grounding DINO looks for BERT's [CLS] 101, [SEP] 102 and "." 1012
CLS, SEP, DOT = 101, 102, 1012
PROMPT_LENGTH = 9  # grounding_dino_inputs' prompt; also max_text_len, so no logits are padded with -inf


# --------------------------------------------------------------------------- weight re-draw

def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | nn.GroupNorm | nn.modules.batchnorm._BatchNorm) \
        or type(module).__name__.endswith("FrozenBatchNorm2d")


def _norm_value(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor | None:
    if name == "weight":
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    if name == "bias":
        return 0.1 * torch.randn(shape, generator=generator)
    if name == "running_mean":
        return torch.zeros(shape)
    if name == "running_var":
        return torch.ones(shape)
    return None


def _draw(module: nn.Module, tensor: torch.Tensor, generator: torch.Generator,
          offset_std: float | None) -> torch.Tensor:
    """A fresh value: fan-in scaled weights, small biases, N(0, 1) embeddings; `offset_std` for sampling offsets."""
    noise = torch.randn(tensor.shape, generator=generator)
    if isinstance(module, nn.Embedding):
        return noise
    if tensor.dim() < 2:
        return noise * (0.05 if offset_std is None else offset_std)
    return noise * (1.0 if offset_std is None else offset_std) / math.sqrt(math.prod(tensor.shape[1:]))


def redraw_weights(model: nn.Module, seed: int, offset_std: float = 1.0) -> nn.Module:
    """Re-draw every parameter (and norm statistics) of `model` from `seed`, in `named_modules()` order.

    The transformers init is degenerate for MSDA: `sampling_offsets.weight` and
    `attention_weights.weight/bias` start at zero, with `sampling_offsets.bias` a fixed grid
    (head directions times 1..P), so every query samples the same offset pattern around its
    reference point and the attention weights are exactly 1/(L*P); and RT-DETR(v2) draws every
    BatchNorm2d weight (gamma) from N(0, initializer_range=0.01) with running_var 1, so each
    conv+BN block of the hybrid encoder scales activations by ~0.01 and the decoder's `value` is
    ~1e-10 (max 3e-10 at the defaults). Here every parameter of 2 or more dimensions (linear and
    conv weights, level_embed, Swin's relative position tables) is N(0, 1/fan_in) with fan_in =
    prod(shape[1:]) (variance preserving), biases and other 1-d parameters N(0, 0.05^2),
    nn.Embedding weights N(0, 1), norm weights 1 + N(0, 0.1^2) with bias N(0, 0.1^2), running mean
    0 and var 1 (LayerNorm, GroupNorm, BatchNorm2d and the frozen batch norms); `sampling_offsets` gets weight
    N(0, offset_std^2/fan_in) and bias N(0, offset_std^2): query-dependent offsets of a couple of
    pixels (2-d reference points) or box fractions (4-d reference boxes).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            _redraw_module(module, generator, offset_std if name.endswith("sampling_offsets") else None)
    return model


def _redraw_module(module: nn.Module, generator: torch.Generator, offset_std: float | None) -> None:
    if _is_norm(module):
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            value = _norm_value(name, tensor.shape, generator)
            if value is not None:
                tensor.copy_(value)
        return
    for param in module.parameters(recurse=False):
        param.copy_(_draw(module, param, generator, offset_std))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Construction under `torch.manual_seed(seed)`, without changing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _finish(model: nn.Module, seed: int) -> nn.Module:
    return redraw_weights(model, seed).eval()


# --------------------------------------------------------------------------- backbones

def _resnet(config_class: Any, out: dict[str, Any]) -> Any:
    """A 4-stage basic-block ResNet, 16-64 channels, strides 4/8/16/32 for stage1..stage4."""
    return config_class(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], layer_type="basic",
                        **out)


def _swin(out_indices: list[int]) -> Any:
    from transformers import SwinConfig

    return SwinConfig(image_size=64, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4,
                      drop_path_rate=0.0, out_indices=out_indices)


# --------------------------------------------------------------------------- factories

def build_deformable_detr(seed: int = 0, d_model: int = 32, layers: int = 2, heads: int = 2, points: int = 4,
                          levels: int = 4, queries: int = 10, ffn_dim: int = 64, head: bool = False) -> nn.Module:
    """DeformableDetrModel (or ...ForObjectDetection): ResNet stages 1-3 plus `levels - 3` strided convs.

    d_model must be a multiple of 32 (GroupNorm(32, d_model) in the input projections).
    """
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, DeformableDetrModel, ResNetConfig

    config = DeformableDetrConfig(
        backbone_config=_resnet(ResNetConfig, {"out_features": ["stage1", "stage2", "stage3"]}),
        d_model=d_model, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=heads,
        decoder_attention_heads=heads, encoder_ffn_dim=ffn_dim, decoder_ffn_dim=ffn_dim, encoder_n_points=points,
        decoder_n_points=points, num_feature_levels=levels, num_queries=queries, disable_custom_kernels=True)
    with _seeded(seed):
        model = (DeformableDetrForObjectDetection if head else DeformableDetrModel)(config)
    return _finish(model, seed)


def _rt_detr_config(config_class: Any, d_model: int, layers: int, heads: int, points: int, queries: int,
                    ffn_dim: int, **extra: Any) -> Any:
    from transformers import RTDetrResNetConfig

    return config_class(
        backbone_config=_resnet(RTDetrResNetConfig, {"out_indices": [1, 2, 3]}), encoder_in_channels=[16, 32, 64],
        feat_strides=[4, 8, 16], d_model=d_model, encoder_hidden_dim=d_model, encoder_ffn_dim=ffn_dim,
        encoder_attention_heads=heads, decoder_in_channels=[d_model] * 3, decoder_ffn_dim=ffn_dim,
        decoder_layers=layers, decoder_attention_heads=heads, decoder_n_points=points, num_feature_levels=3,
        num_queries=queries, num_denoising=0, **extra)


def build_rt_detr(seed: int = 0, d_model: int = 32, layers: int = 2, heads: int = 2, points: int = 4,
                  queries: int = 10, ffn_dim: int = 64, head: bool = False) -> nn.Module:
    """RTDetrModel (or RTDetrForObjectDetection): one AIFI encoder layer (plain attention), MSDA in the decoder."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrModel

    config = _rt_detr_config(RTDetrConfig, d_model, layers, heads, points, queries, ffn_dim)
    with _seeded(seed):
        model = (RTDetrForObjectDetection if head else RTDetrModel)(config)
    return _finish(model, seed)


def build_rt_detr_v2(seed: int = 0, d_model: int = 32, layers: int = 2, heads: int = 2, points: int = 4,
                     queries: int = 10, ffn_dim: int = 64, head: bool = False) -> nn.Module:
    """RTDetrV2Model (or ...ForObjectDetection): `points` per level for all 3 levels, method "default"."""
    from transformers import RTDetrV2Config, RTDetrV2ForObjectDetection, RTDetrV2Model

    config = _rt_detr_config(RTDetrV2Config, d_model, layers, heads, points, queries, ffn_dim, decoder_n_levels=3,
                             decoder_method="default")
    with _seeded(seed):
        model = (RTDetrV2ForObjectDetection if head else RTDetrV2Model)(config)
    return _finish(model, seed)


def build_mask2former(seed: int = 0, d_model: int = 32, layers: int = 2, heads: int = 2, queries: int = 10,
                      ffn_dim: int = 64, head: bool = False) -> nn.Module:
    """Mask2FormerModel (or ...ForUniversalSegmentation): Swin stages 1-4; MSDA in the pixel decoder's encoder.

    The library fixes that attention at 3 levels (the 3 coarsest Swin stages) and 4 points.
    d_model must be a multiple of 32 (GroupNorm(32, ...) in the pixel decoder).
    """
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerModel

    config = Mask2FormerConfig(
        backbone_config=_swin([1, 2, 3, 4]), feature_size=d_model, mask_feature_size=d_model, hidden_dim=d_model,
        encoder_feedforward_dim=ffn_dim, encoder_layers=layers, decoder_layers=layers, num_attention_heads=heads,
        dim_feedforward=ffn_dim, num_queries=queries)
    with _seeded(seed):
        model = (Mask2FormerForUniversalSegmentation if head else Mask2FormerModel)(config)
    return _finish(model, seed)


def build_grounding_dino(seed: int = 0, d_model: int = 32, layers: int = 2, heads: int = 2, points: int = 4,
                         levels: int = 4, queries: int = 10, ffn_dim: int = 64, head: bool = False) -> nn.Module:
    """GroundingDinoModel (or ...ForObjectDetection): Swin stages 1-3 plus `levels - 3` convs, 1-layer BERT text.

    d_model must be a multiple of 32 (GroupNorm(32, d_model) in the input projections).
    """
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoModel

    text = BertConfig(vocab_size=TEXT_VOCAB, hidden_size=d_model, num_hidden_layers=1, num_attention_heads=heads,
                      intermediate_size=ffn_dim, max_position_embeddings=64)
    config = GroundingDinoConfig(
        backbone_config=_swin([1, 2, 3]), text_config=text, d_model=d_model, encoder_layers=layers,
        decoder_layers=layers, encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim, encoder_n_points=points, decoder_n_points=points, num_feature_levels=levels,
        num_queries=queries, max_text_len=PROMPT_LENGTH, dropout=0.0, fusion_droppath=0.0, disable_custom_kernels=True)
    with _seeded(seed):
        model = (GroundingDinoForObjectDetection if head else GroundingDinoModel)(config)
    return _finish(model, seed)


# --------------------------------------------------------------------------- inputs

def _pixels(seed: int, batch: int, height: int, width: int) -> tuple[torch.Generator, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return generator, torch.randn(batch, 3, height, width, generator=generator)


def _mask(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.ones(batch, height, width, dtype=torch.int64)


def deformable_detr_inputs(seed: int = 0, batch: int = 1, height: int = 64, width: int = 96) -> dict[str, torch.Tensor]:
    """pixel_values f32 [N, 3, H, W] ~ N(0, 1) and pixel_mask int64 [N, H, W] of ones."""
    _, pixels = _pixels(seed, batch, height, width)
    return {"pixel_values": pixels, "pixel_mask": _mask(batch, height, width)}


def rt_detr_inputs(seed: int = 0, batch: int = 1, height: int = 64, width: int = 96) -> dict[str, torch.Tensor]:
    """pixel_values only: RT-DETR computes and then drops the backbone masks."""
    return {"pixel_values": _pixels(seed, batch, height, width)[1]}


def rt_detr_v2_inputs(seed: int = 0, batch: int = 1, height: int = 64, width: int = 96) -> dict[str, torch.Tensor]:
    """pixel_values only, as for RT-DETR."""
    return rt_detr_inputs(seed, batch, height, width)


def mask2former_inputs(seed: int = 0, batch: int = 1, height: int = 64, width: int = 96) -> dict[str, torch.Tensor]:
    """pixel_values only (Mask2Former's pixel_mask argument is unused)."""
    return {"pixel_values": _pixels(seed, batch, height, width)[1]}


def grounding_dino_inputs(seed: int = 0, batch: int = 1, height: int = 64, width: int = 96) -> dict[str, torch.Tensor]:
    """Pixels and mask plus a 9-token prompt per image, `[CLS] w w . w w w . [SEP]`, all int64 [N, 9].

    Words are random ids in [200, 1000), clear of the special ids; the two "." make two phrases, so
    the text self-attention mask is block-diagonal as with a real "a cat . a remote control ." prompt.
    """
    generator, pixels = _pixels(seed, batch, height, width)
    words = torch.randint(200, 1000, (batch, 5), generator=generator)
    column = torch.ones(batch, 1, dtype=torch.int64)
    ids = torch.cat([column * CLS, words[:, :2], column * DOT, words[:, 2:], column * DOT, column * SEP], 1)
    return {"pixel_values": pixels, "pixel_mask": _mask(batch, height, width), "input_ids": ids,
            "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


# --------------------------------------------------------------------------- call sites

@dataclass(frozen=True)
class Family:
    build: Callable[..., nn.Module]
    inputs: Callable[..., dict[str, torch.Tensor]]
    call: str  # the MSDA callable, package.module:attr


FAMILIES: dict[str, Family] = {
    "deformable_detr": Family(
        build_deformable_detr, deformable_detr_inputs,
        "transformers.models.deformable_detr.modeling_deformable_detr:MultiScaleDeformableAttention.forward"),
    "rt_detr": Family(
        build_rt_detr, rt_detr_inputs,
        "transformers.models.rt_detr.modeling_rt_detr:MultiScaleDeformableAttention.forward"),
    "rt_detr_v2": Family(
        build_rt_detr_v2, rt_detr_v2_inputs,
        "transformers.models.rt_detr_v2.modeling_rt_detr_v2:multi_scale_deformable_attention_v2"),
    "mask2former": Family(
        build_mask2former, mask2former_inputs,
        "transformers.models.mask2former.modeling_mask2former:multi_scale_deformable_attention"),
    "grounding_dino": Family(
        build_grounding_dino, grounding_dino_inputs,
        "transformers.models.grounding_dino.modeling_grounding_dino:MultiScaleDeformableAttention.forward"),
}


@dataclass(frozen=True)
class MsdaCall:
    module: str  # the innermost module running when the callable was called
    arguments: dict[str, Any]  # by parameter name, `self` left out
    output: torch.Tensor


def _owner(path: str) -> tuple[Any, str]:
    module_name, attrs = path.split(":")
    owner: Any = importlib.import_module(module_name)
    *parents, last = attrs.split(".")
    for attr in parents:
        owner = getattr(owner, attr)
    return owner, last


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda _m, _a, name=name: stack.append(name)))
        handles.append(module.register_forward_hook(lambda _m, _a, _o: (stack.pop(), None)[1]))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def record_msda_calls(model: nn.Module, inputs: dict[str, torch.Tensor], call: str) -> tuple[list[MsdaCall], Any]:
    """Run `model(**inputs)` with `call` wrapped; every call's arguments and result, and the model's output."""
    owner, attr = _owner(call)
    original = getattr(owner, attr)
    signature = inspect.signature(original)
    calls: list[MsdaCall] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs).arguments
        calls.append(MsdaCall(stack[-1] if stack else "", {k: v for k, v in bound.items() if k != "self"}, result))
        return result

    with _module_stack(model) as stack, torch.no_grad():
        setattr(owner, attr, wrapper)
        try:
            output = model(**inputs)
        finally:
            setattr(owner, attr, original)
    return calls, output


# --------------------------------------------------------------------------- report

def describe(value: Any) -> str:
    """A tensor as dtype[shape] (and its first values when integer), anything else as repr."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    text = f"{str(value.dtype).removeprefix('torch.')}{list(value.shape)}"
    return text if value.dtype.is_floating_point else f"{text} {value.flatten()[:12].tolist()}"


def msda_stats(record: MsdaCall) -> str:
    """The non-degeneracy figures of one call: value, sampling locations, attention weights, output."""
    args = record.arguments
    locations, weights = args["sampling_locations"], args["attention_weights"]
    inside = ((locations >= 0) & (locations <= 1)).float().mean()
    return (f"value std {args['value'].std():.3g}, locations std {locations.std():.3g} "
            f"[{locations.min():.2f}, {locations.max():.2f}] {inside:.0%} in [0,1], "
            f"weights std {weights.std():.3g} max {weights.max():.3g}, output max|.| {record.output.abs().max():.3g}")


def _output_stats(output: Any) -> str:
    tensors = [(k, v) for k, v in output.items() if isinstance(v, torch.Tensor) and v.dtype.is_floating_point]
    return ", ".join(f"{k} {list(v.shape)} finite {bool(v.isfinite().all())} std {v.std():.3g}" for k, v in tensors)


def forward_seconds(model: nn.Module, inputs: dict[str, torch.Tensor], repeats: int = 3) -> float:
    """The fastest of `repeats` timed forwards (the machine may be busy)."""
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, family: Family, seed: int = 0) -> None:
    model, inputs = family.build(seed=seed), family.inputs(seed=seed)
    calls, output = record_msda_calls(model, inputs, family.call)  # warm-up, and the record
    print(f"== {name}: forward {forward_seconds(model, inputs):.3f} s, {len(calls)} calls of {family.call}")
    for index, record in enumerate(calls):
        print(f"  [{index}] {record.module}: {msda_stats(record)}")
    for key, value in calls[0].arguments.items():
        print(f"      {key}: {describe(value)}")
    print(f"      -> {describe(calls[0].output)}")
    print(f"  outputs: {_output_stats(output)}")


def main() -> None:
    for name, family in FAMILIES.items():
        report(name, family)


if __name__ == "__main__":
    main()
