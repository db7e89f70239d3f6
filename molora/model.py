"""MoLoRAModel: frozen Phi-4-mini + SigLIP + conformer + projectors + per-sample routed LoRAs.

Forward keywords match transformers' ``Phi4MultimodalForCausalLM`` so a batch from either
processor feeds either model. Unlike the reference, the adapter and the audio projector are
chosen per batch row from the row's input type (text / image / speech / image+speech), in
training and in generation.

A forward is: plan (the execution plan of the call, ``molora/plan.py``) -> embed (token
embeddings, media features in their placeholder slots) -> route (the token layout the plan implies,
``molora/token_layout.py``: positions, attention, the LoRA route) -> decoder
(``molora/decoder.py``) -> logits / loss (``molora/loss.py``). What is not that pipeline lives
beside it: the frozen-row split (``molora/frozen_rows.py``) and sharded training's ``touch_all``
(``molora/touch_all.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .adapters.lora import RoutedLoRALinear, inject_routed_lora
from .adapters.route import TokenRoute
from .adapters.router import Router
from .backbones import build_backbone
from .config import MoLoRAConfig
from .errors import PlaceholderError
from .forward_call import ForwardCall
from .frozen_rows import backbone_frozen, frozen_text_rows, loss_apart
from .modalities import EmbedContext
from .plan import ExecutionPlan, FastPaths, choose_plan, lora_paths
from .token_layout import make_layout, segments
from .touch_all import join_every_trainable


@dataclass
class MoLoRAOutput:
    logits: torch.Tensor | None
    loss: torch.Tensor | None = None
    cache: object | None = None  # the KV cache (transformers >= 5.24 names it ``cache``)
    row_types: list[str] | None = None
    # final hidden states; None when only the positions that feed the logits / the loss were computed
    hidden_states: torch.Tensor | None = None
    plan: ExecutionPlan | None = None

    @property
    def past_key_values(self):
        """The KV cache under its pre-5.24 transformers name."""
        return self.cache


class MoLoRAModel(nn.Module):
    def __init__(self, config: MoLoRAConfig):
        super().__init__()
        self.config = config
        b = config.backbone
        self.language_model = build_backbone(b)
        self.lm_head = None if b.tie_word_embeddings else nn.Linear(b.hidden_size, b.vocab_size, bias=False)
        for entry in config.modality_entries():  # image_embed, audio_embed, ... (molora/modalities)
            self.add_module(entry.module_name, entry.build(config))
        self.router = Router(config)
        inject_routed_lora(self.language_model, config.adapters)
        self.fast_paths = FastPaths()  # the speed paths' switches (molora/plan.py)
        self.touch_all = False  # sharded training: every trainable tensor joins each process's graph
        self.quantization = None  # the QuantizationSpec of a quantised frozen base (molora/quantization.py)
        self.quantized_from = None  # where its original weights are (a folder or a preset name)
        self.freeze_base()

    # -- construction / IO -------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_id: str, **kwargs) -> "MoLoRAModel":
        from .checkpoint import load_model

        return load_model(path_or_id, **kwargs)

    def save_pretrained(self, directory, **kwargs) -> list[str]:
        """``layout=`` molora | phi4mm | phi4_multimodal, ``max_shard_size="5GB"``; returns the files written."""
        from .checkpoint import save_model

        return save_model(self, directory, **kwargs)

    def freeze_base(self) -> None:
        """The language model's own weights (embeddings, norms, base linears) are frozen."""
        for name, p in self.language_model.named_parameters():
            p.requires_grad_(".lora_A." in name or ".lora_B." in name)
        if self.lm_head is not None:
            self.lm_head.requires_grad_(False)

    def set_merged_inference(self, enabled: bool = True) -> None:
        """``fast_paths.merged_inference``: single-adapter inference through a cached merged weight per
        linear (one extra copy of the adapted weights per adapter used); off frees the copies."""
        self.fast_paths.merged_inference = enabled
        if not enabled:
            for m in self.lora_layers().values():
                m.clear_merged()

    @property
    def split_frozen_rows(self) -> bool:
        return self.fast_paths.split_frozen_rows

    @split_frozen_rows.setter
    def split_frozen_rows(self, value: bool) -> None:
        self.fast_paths.split_frozen_rows = bool(value)

    def enable_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute decoder layers (and each modality's encoder where its entry can: the conformer's
        blocks) in backward instead of storing their activations; each layer's route is an argument,
        so the recomputation uses the same one."""
        self.language_model.activation_checkpointing = enabled
        for entry in self.config.modality_entries():
            entry.set_activation_checkpointing(getattr(self, entry.module_name), enabled)

    def lora_layers(self) -> dict[str, RoutedLoRALinear]:
        return {n: m for n, m in self.language_model.named_modules() if isinstance(m, RoutedLoRALinear)}

    @property
    def device(self) -> torch.device:
        return self.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    # -- forward -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image_pixel_values=None, image_sizes=None, image_attention_mask=None,
                audio_input_features=None, audio_embed_sizes=None, audio_attention_mask=None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache=None, use_cache: bool = False, logits_to_keep: int = 0, return_logits: bool = True,
                loss_reduction: str = "mean", cu_seqlens: torch.Tensor | None = None,
                row_types: list[str] | None = None, route: TokenRoute | None = None, past_key_values=None,
                num_img_tokens=None, **modality_inputs) -> MoLoRAOutput:
        """Logits and / or loss of a padded ``[B, T]`` batch, or of a packed one (``input_ids``
        ``[1, N]`` with ``cu_seqlens`` [rows + 1] marking where each row starts, as the trainer's
        collator makes them).

        ``return_logits=False`` with ``labels``: the loss comes from the labelled positions only
        (logits of the other positions are never formed: with a 200k vocabulary they are most of a
        training step's memory); ``loss_reduction`` is "mean" (over labelled tokens) or "sum".
        ``cache`` is the KV cache (``past_key_values``, its pre-5.24 transformers name, is accepted
        too); ``route`` reuses a decode step's precomputed route (``step_route``);
        ``num_img_tokens`` (transformers' image processor output) is ignored. The inputs of further
        modalities of the config come as keywords named by their entries (``Modality.input_keys``)."""
        call = ForwardCall.of(self, input_ids, attention_mask, labels=labels, position_ids=position_ids,
                              cu_seqlens=cu_seqlens, row_types=row_types, cache=cache, past_key_values=past_key_values,
                              use_cache=use_cache, route=route, logits_to_keep=logits_to_keep,
                              return_logits=return_logits, loss_reduction=loss_reduction)
        media = self.media_inputs(image_pixel_values=image_pixel_values, image_sizes=image_sizes,
                                  image_attention_mask=image_attention_mask, audio_input_features=audio_input_features,
                                  audio_embed_sizes=audio_embed_sizes, audio_attention_mask=audio_attention_mask,
                                  **modality_inputs)
        # 0. plan: which fast paths this call takes (molora/plan.py). A training call whose text-only rows
        #    no trainable weight reaches runs them apart, without autograd (molora/frozen_rows.py)
        plan, frozen_rows = self.plan_call(call)
        if frozen_rows is not None:
            return MoLoRAOutput(logits=None, loss=loss_apart(self, call, media, frozen_rows),
                                row_types=call.row_types, plan=plan)
        # 1. embed: token embeddings, each modality's features in its placeholder slots (a decode step
        #    carries new text tokens only)
        embeds = self.embed(call.input_ids, call.row_types, call.cu_seqlens, **media) if call.prefill else \
            self.language_model.embed_tokens(call.input_ids)
        # sharded training: every trainable tensor outside the decoder layers joins the decoder's input
        # times 0, so that input needs a gradient on every process, whatever its rows (molora/touch_all.py)
        embeds = join_every_trainable(self, embeds, plan)
        # 2. route: the token layout the plan implies, padded / packed / decode (molora/token_layout.py):
        #    positions, attention, each token's LoRA, the positions read, the next-token targets
        layout = make_layout(self, embeds, call, plan)
        # 3. decoder (molora/decoder.py)
        hidden = self.language_model(layout.embeds, layout.positions, layout.route, layout.attend,
                                     call.decoder_cache, layout.narrow)
        # 4. logits / loss, in the layout the decoder ran (molora/loss.py)
        logits, loss = layout.logits_and_loss(self.lm_logits, hidden, call)
        return MoLoRAOutput(logits=logits, loss=loss, cache=call.returned_cache, row_types=call.row_types,
                            hidden_states=layout.visible_hidden(hidden), plan=plan)

    def media_inputs(self, **inputs) -> dict:
        """The media keywords of a forward: the image / audio ones, and those of the config's further
        modalities (``Modality.input_keys``); any other keyword is refused."""
        known = {"image_pixel_values", "image_sizes", "image_attention_mask", "audio_input_features",
                 "audio_embed_sizes", "audio_attention_mask"} | {k for m in self.config.modality_entries()
                                                                 for k in m.input_keys}
        unknown = sorted(set(inputs) - known)
        if unknown:
            raise TypeError(f"MoLoRAModel.forward() got unexpected keyword argument(s) {unknown}; the inputs "
                            f"of this model's modalities are {sorted(known)}")
        return inputs

    # -- embed ---------------------------------------------------------------------------
    def row_types(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor | None = None) -> list[str]:
        rows = input_ids if cu_seqlens is None else segments(input_ids[0], cu_seqlens)
        return self.router.row_types(rows)

    def _scatter(self, embeds, input_ids, token_id, pieces: list[torch.Tensor], what: str):
        pos = (input_ids == token_id).nonzero(as_tuple=True)
        n_slots = pos[0].numel()
        values = torch.cat(pieces, 0) if pieces else embeds.new_zeros(0, embeds.shape[-1])
        if values.shape[0] != n_slots:
            raise PlaceholderError(
                f"the prompt has {n_slots} {what} placeholder tokens but the {what} inputs give "
                f"{values.shape[0]} feature tokens ({len(pieces)} {what} item(s)); each <|{what}_N|> must "
                f"expand to exactly its item's token count (use MoLoRAProcessor)", what)
        return embeds.index_put(pos, values.to(embeds.device, embeds.dtype))

    def embed(self, input_ids, row_types, cu_seqlens=None, **media) -> torch.Tensor:
        """Token embeddings with every modality's features in its placeholder slots."""
        embeds = self.language_model.embed_tokens(input_ids)
        for entry in self.config.modality_entries():
            token_id = entry.token_id(self.config)
            inputs = {k: media.get(k) for k in entry.input_keys}
            n_slots = int((input_ids == token_id).sum())
            if not n_slots and not entry.present(inputs):
                continue
            if not entry.present(inputs):
                raise PlaceholderError(f"the prompt has {entry.name} placeholder tokens but no {entry.name} was given",
                                       entry.name)
            ctx = EmbedContext(input_ids, row_types, self.router, token_id, cu_seqlens)
            feats = entry.embed(getattr(self, entry.module_name), inputs, ctx, self.device, self.dtype)
            embeds = self._scatter(embeds, input_ids, token_id, feats, entry.name)
        return embeds

    # -- route ---------------------------------------------------------------------------
    def plan(self, input_ids, attention_mask=None, labels=None, cu_seqlens=None, row_types=None, cache=None,
             route=None, logits_to_keep=0, return_logits=True) -> ExecutionPlan:
        """The execution plan of a call with these inputs (``molora/plan.py``)."""
        call = ForwardCall.of(self, input_ids, attention_mask, labels=labels, position_ids=None,
                              cu_seqlens=cu_seqlens, row_types=row_types, cache=cache, use_cache=False,
                              route=route, logits_to_keep=logits_to_keep, return_logits=return_logits,
                              loss_reduction="mean")
        return self.plan_call(call)[0]

    def plan_call(self, call: ForwardCall) -> tuple[ExecutionPlan, tuple[list[int], list[int]] | None]:
        """The plan of ``call``, and its (frozen text rows, other rows) when the plan splits them (else None)."""
        # looked for only where the switch could use it (it reads the batch back from the device)
        split = frozen_text_rows(self, call.input_ids, call.row_types, call.cu_seqlens) if (
            self.fast_paths.split_frozen_rows and call.training_loss and torch.is_grad_enabled()
            and not self.touch_all and backbone_frozen(self)) else None
        dropout = getattr(self.language_model.config, "attention_dropout", 0.0) if self.training else 0.0
        plan = choose_plan(self.fast_paths, call.facts(frozen_rows_possible=split is not None), self.device,
                           self.dtype, touch_all=self.touch_all, attention_dropout=dropout,
                           quantized_base=self.quantization is not None)
        return plan, split if plan.split_frozen_rows else None

    def step_route(self, row_types: list[str]) -> TokenRoute:
        """The route of a one-token-per-row decode step (reused for every step of a generate)."""
        idx = self.router.adapter_index(row_types, device=self.device)
        fused, merged = lora_paths(self.fast_paths, grad=torch.is_grad_enabled(),
                                   quantized_base=self.quantization is not None)
        return TokenRoute.build(idx, (len(row_types), 1), self.config.adapter_names, None, merged=merged,
                                fused=fused)

    # -- loss ----------------------------------------------------------------------------
    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of ``hidden`` [..., H] as one 2-D matmul that reads the (tied) output embedding in
        place: a strided [B, 1, H] slice (``logits_to_keep=1``) through a batched matmul can copy the
        transposed [V, H] weight on every call (200,064 x 3072 per generated token at full size)."""
        weight = self.language_model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        flat = hidden.reshape(-1, hidden.shape[-1]).to(weight.device)
        return F.linear(flat, weight).view(*hidden.shape[:-1], weight.shape[0])

    # -- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                 max_new_tokens: int = 32, eos_token_ids: list[int] | None = None,
                 logits_processor=None, sampler=None, **media) -> torch.Tensor:
        """Greedy (or ``sampler``-driven) decoding with a KV cache; rows keep their routes throughout.

        Expects left padding. Returns the new tokens [B, <= max_new_tokens]; rows that stopped
        early are filled with the pad id.
        """
        from .generation import decode_loop

        return decode_loop(self, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                           eos_token_ids=eos_token_ids, logits_processor=logits_processor, sampler=sampler, **media)

    def parameter_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name, p in self.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                adapter = name.split(".lora_")[1].split(".")[1]
                key = f"lora[{adapter}]"
            else:
                key = name.split(".")[0]
            counts[key] = counts.get(key, 0) + p.numel()
        return counts


