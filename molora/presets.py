"""Named configurations: the published model, a benchmark-sized one and the embedded tiny one."""
from __future__ import annotations

from .config import AudioConfig, BackboneConfig, LoraSpec, MoLoRAConfig, VisionConfig, _reference_router

# Token ids of the tiny byte-level tokenizer (see molora/tokenizer.py): 256 byte tokens,
# then the special tokens in this order.
TINY_SPECIAL_TOKENS = [
    "<|endoftext|>",  # 256: bos = pad = eos
    "<|system|>",  # 257
    "<|user|>",  # 258
    "<|assistant|>",  # 259
    "<|end|>",  # 260
    "<|endoftext10|>",  # 261: image placeholder
    "<|endoftext11|>",  # 262: audio placeholder
    "<sep>",  # 263
]
TINY_VOCAB = 272  # 264 used, rounded up to a multiple of 16
TINY_BPE_VOCAB = 1024  # the tiny preset: TINY_VOCAB fixed rows + learned merges (molora/tokenizer.py)


def phi4_multimodal() -> MoLoRAConfig:
    """The published Phi-4-multimodal-instruct shapes (official config.json, not transformers' defaults)."""
    return MoLoRAConfig(name="phi4-multimodal", tokenizer="microsoft/Phi-4-multimodal-instruct")


def phi4_mini_reasoning_multimodal() -> MoLoRAConfig:
    """Phi-4-mini-reasoning as the backbone (the same shapes as Phi-4-mini: it is a fine-tune of it)
    with Phi-4-multimodal's encoders, projectors and routed LoRAs."""
    cfg = phi4_multimodal()
    cfg.name, cfg.tokenizer = "phi4-mini-reasoning-multimodal", "microsoft/Phi-4-mini-reasoning"
    cfg.backbone.pretrained = "microsoft/Phi-4-mini-reasoning"
    return cfg


def phi4_14b_multimodal() -> MoLoRAConfig:
    """Phi-4 (14B; also the shape of Phi-4-reasoning) as the backbone: 40 layers of width 5120,
    40 query / 10 key-value heads, rotary on the whole head (theta 250000, no LongRoPE), context
    16384, an untied 100,352-token vocabulary; with Phi-4-multimodal's encoders and routed LoRAs
    (projectors widened to 5120). The image / audio placeholders take two ids at the top of the
    vocabulary, which Phi-4's tokenizer reserves (``<|dummy_N|>``)."""
    return MoLoRAConfig(
        name="phi4-14b-multimodal", tokenizer="microsoft/phi-4",
        backbone=BackboneConfig(
            vocab_size=100352, hidden_size=5120, intermediate_size=17920, num_hidden_layers=40,
            num_attention_heads=40, num_key_value_heads=10, rope_theta=250000.0, partial_rotary_factor=1.0,
            rope_type="default", short_factor=None, long_factor=None, original_max_position_embeddings=16384,
            max_position_embeddings=16384, tie_word_embeddings=False, bos_token_id=100257, pad_token_id=100257,
            eos_token_ids=[100265, 100257], image_token_id=100350, audio_token_id=100351,
            pretrained="microsoft/phi-4"),
    )


def small() -> MoLoRAConfig:
    """Proportioned like the real model (GQA 3:1, partial rotary 0.75, r/alpha ratios), ~0.3 GB fp32."""
    return MoLoRAConfig(
        name="small",
        tokenizer="bytes",
        backbone=BackboneConfig(
            vocab_size=TINY_VOCAB, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
            num_attention_heads=6, num_key_value_heads=2, short_factor=[1.0] * 48,
            long_factor=[1.0 + i / 8 for i in range(48)], bos_token_id=256, pad_token_id=256,
            eos_token_ids=[260, 256], image_token_id=261, audio_token_id=262,
        ),
        vision=VisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6,
                            image_size=224, patch_size=14),
        audio=AudioConfig(hidden_size=384, intermediate_size=768, num_blocks=6, num_attention_heads=6,
                          ext_pw_out_channel=384, depthwise_separable_out_channel=384, nemo_conv_channels=384),
        adapters={"vision": LoraSpec(r=64, alpha=128), "speech": LoraSpec(r=80, alpha=160, dropout=0.01)},
        router=_reference_router(),
    )


def tiny() -> MoLoRAConfig:
    """The embedded default: a few small layers, a tiny subword tokenizer, no downloads.

    Sized so that ``molora quickstart`` can train it through every stage on two CPU cores in
    minutes and still learn to transcribe, read documents and read charts (its pretrained parts
    ship in ``molora/weights/tiny``); proportioned like the real model where it costs nothing
    (GQA 2:1, partial rotary 0.75, vision:speech LoRA rank 4:5, alpha = 2r).
    """
    return MoLoRAConfig(
        name="tiny",
        tokenizer="tiny-bpe",
        backbone=BackboneConfig(
            vocab_size=TINY_BPE_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, short_factor=[1.0] * 12,
            long_factor=[1.0 + i / 4 for i in range(12)], original_max_position_embeddings=4096,
            max_position_embeddings=16384, bos_token_id=256, pad_token_id=256, initializer_range=0.1,
            eos_token_ids=[260, 256], image_token_id=261, audio_token_id=262,
        ),
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=2,
                            image_size=56, patch_size=14),
        audio=AudioConfig(hidden_size=64, intermediate_size=128, num_blocks=4, num_attention_heads=4,
                          ext_pw_out_channel=64, depthwise_separable_out_channel=64, nemo_conv_channels=32,
                          bias_max_distance=500),
        adapters={"vision": LoraSpec(r=8, alpha=16), "speech": LoraSpec(r=10, alpha=20, dropout=0.0)},
        router=_reference_router(),
    )


PRESETS = {"phi4-multimodal": phi4_multimodal, "phi4-mini-reasoning-multimodal": phi4_mini_reasoning_multimodal,
           "phi4-14b-multimodal": phi4_14b_multimodal, "small": small, "tiny": tiny}
