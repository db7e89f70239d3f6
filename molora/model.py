"""MoLoRAModel: frozen Phi-4-mini + SigLIP + conformer + projectors + per-sample routed LoRAs.

Forward keywords match transformers' ``Phi4MultimodalForCausalLM`` so a batch from either
processor feeds either model. Unlike the reference, the adapter and the audio projector are
chosen per batch row from the row's input type (text / image / speech / image+speech), in
training and in generation.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from .adapters.lora import RoutedLoRALinear, compact_token_blocks, inject_routed_lora
from .adapters.router import Router
from .adapters.routing import RoutingState
from .audio_embed import AudioEmbedder
from .backbone import LengthGroups, build_backbone
from .config import MoLoRAConfig
from .encoders.image_embed import ImageEmbedder
from .errors import PlaceholderError
from .frozen_rows import row_subset, split_rows
from .loss import causal_lm_loss, loss_precision
from .packing import PackedRows


@dataclass
class MoLoRAOutput:
    logits: torch.Tensor
    loss: torch.Tensor | None = None
    cache: object | None = None  # the KV cache (transformers >= 5.24 names it ``cache``)
    row_types: list[str] | None = None
    # final hidden states; None when only the positions that feed the logits / the loss were computed
    # (``logits_to_keep`` or ``labels`` with ``return_logits=False``: see MoLoRAModel._narrow_last_layer)
    hidden_states: torch.Tensor | None = None

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
        self.image_embed = ImageEmbedder(config)
        self.audio_embed = AudioEmbedder(config)
        self.router = Router(config)
        self.routing = RoutingState(config.adapter_names)
        inject_routed_lora(self.language_model, config.adapters, self.routing)
        compact_token_blocks(self.language_model.layers, self.routing)
        # a loss-only training forward runs text-only rows of a frozen backbone without autograd
        # (molora/frozen_rows.py); False: one pass for every row
        self.split_frozen_rows = True
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
        """Inference speed-up (off by default): when every token of a forward uses the same adapter
        (an ASR batch, a single conversation), each routed linear runs one matmul with a cached
        merged weight W + s*B@A instead of three. Costs one extra copy of the adapted weights per
        adapter used; mixed batches and training are unaffected."""
        for m in self.lora_layers().values():
            m.merge_inference = enabled
            if not enabled:
                m._merged.clear()

    def enable_activation_checkpointing(self) -> None:
        """Recompute decoder layers in backward instead of storing their activations. The routing
        in force when a layer ran is restored while it is recomputed (backward runs after the
        forward's routing context has closed)."""
        import contextlib

        routing = self.routing

        def context_fn():
            return contextlib.nullcontext(), routing.restored(routing.snapshot())

        self.language_model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False, "context_fn": context_fn})
        if hasattr(self.audio_embed.encoder, "gradient_checkpointing"):
            self.audio_embed.encoder.gradient_checkpointing = True

    def lora_layers(self) -> dict[str, RoutedLoRALinear]:
        return {n: m for n, m in self.language_model.named_modules() if isinstance(m, RoutedLoRALinear)}

    @property
    def device(self) -> torch.device:
        return self.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    # -- embeddings ----------------------------------------------------------------------
    def row_types(self, input_ids: torch.Tensor) -> list[str]:
        b = self.config.backbone
        return self.router.row_types(input_ids, b.image_token_id, b.audio_token_id)

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

    def embed(self, input_ids, row_types, image_pixel_values=None, image_sizes=None, image_attention_mask=None,
              audio_input_features=None, audio_embed_sizes=None, audio_attention_mask=None) -> torch.Tensor:
        b = self.config.backbone
        embeds = self.language_model.embed_tokens(input_ids)
        n_img_slots = int((input_ids == b.image_token_id).sum())
        n_aud_slots = int((input_ids == b.audio_token_id).sum())
        if n_img_slots or (image_pixel_values is not None and image_pixel_values.numel()):
            if image_pixel_values is None:
                raise PlaceholderError("the prompt has image placeholder tokens but no image was given", "image")
            if image_attention_mask is None:  # every patch of every crop is real
                p = self.config.vision.patch_size
                image_attention_mask = torch.ones(image_pixel_values.shape[:2] + image_pixel_values.shape[-2:],
                                                  dtype=torch.bool, device=image_pixel_values.device)[..., ::p, ::p]
            feats = self.image_embed(image_pixel_values.to(self.device), image_sizes, image_attention_mask)
            embeds = self._scatter(embeds, input_ids, b.image_token_id, feats, "image")
        if n_aud_slots or (audio_input_features is not None and audio_input_features.numel()):
            if audio_input_features is None or audio_embed_sizes is None:
                raise PlaceholderError("the prompt has audio placeholder tokens but no audio was given", "audio")
            sizes = audio_embed_sizes.tolist()
            pos_rows = (input_ids == b.audio_token_id).nonzero(as_tuple=True)[0]
            if pos_rows.numel() != sum(sizes):
                raise PlaceholderError(
                    f"the prompt has {pos_rows.numel()} audio placeholder tokens but audio_embed_sizes "
                    f"sum to {sum(sizes)} ({len(sizes)} clip(s))", "audio")
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            owners = pos_rows[torch.tensor(starts, dtype=torch.long, device=pos_rows.device)].tolist()
            projectors = [self.router.audio_projector(row_types[r]) for r in owners]
            feats = self.audio_embed(audio_input_features.to(self.device, self.dtype), audio_embed_sizes,
                                     audio_attention_mask, projectors)
            embeds = self._scatter(embeds, input_ids, b.audio_token_id, feats, "audio")
        return embeds

    # -- forward -------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                image_pixel_values=None, image_sizes=None, image_attention_mask=None,
                audio_input_features=None, audio_embed_sizes=None, audio_attention_mask=None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                cache=None, use_cache: bool = False, row_types: list[str] | None = None,
                logits_to_keep: int = 0, return_logits: bool = True, loss_reduction: str = "mean",
                routing: tuple | None = None, past_key_values=None, **unused) -> MoLoRAOutput:
        """``cache`` is the KV cache (``past_key_values``, its pre-5.24 transformers name, is accepted too).
        ``return_logits=False`` with ``labels``: the loss is computed from the labelled positions
        only (logits of the other positions are never formed: with a 200k vocabulary they are most
        of a training step's memory); ``loss_reduction`` is "mean" (over labelled tokens) or "sum"."""
        past_key_values = cache if cache is not None else past_key_values
        input_ids = input_ids.to(self.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        if row_types is None:
            row_types = self.row_types(input_ids)
        if labels is not None and not return_logits and not logits_to_keep and past_key_values is None \
                and not use_cache and routing is None and position_ids is None and torch.is_grad_enabled() \
                and loss_reduction in ("mean", "sum"):
            split = split_rows(self, input_ids, row_types) if self.split_frozen_rows else None
            if split is not None:  # text-only rows of a frozen backbone: no backward for them
                media = {"image_pixel_values": image_pixel_values, "image_sizes": image_sizes,
                         "image_attention_mask": image_attention_mask, "audio_input_features": audio_input_features,
                         "audio_embed_sizes": audio_embed_sizes, "audio_attention_mask": audio_attention_mask}
                batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **media}
                return self._forward_split(batch, row_types, *split, loss_reduction)
        prefill = past_key_values is None or past_key_values.get_seq_length() == 0
        if prefill:
            embeds = self.embed(input_ids, row_types, image_pixel_values, image_sizes, image_attention_mask,
                                audio_input_features, audio_embed_sizes, audio_attention_mask)
        else:  # decode steps carry only new text tokens; media were consumed at prefill
            embeds = self.language_model.embed_tokens(input_ids)
        if position_ids is None:
            position_ids = self._positions(attention_mask, input_ids.shape, past_key_values)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if routing is not None:  # a precomputed route (decode steps reuse one: same rows, no padding)
            ctx = self.routing.restored(routing)
        else:
            row_adapter = self.router.adapter_index(row_types, device=input_ids.device)
            token_mask = None if attention_mask is None else attention_mask[:, -input_ids.shape[1]:].bool()
            ctx = self.routing.route(row_adapter, input_ids.shape[1], token_mask)
        used = None if routing is not None else self._used_positions(labels, logits_to_keep, return_logits,
                                                                     attention_mask, input_ids.shape)
        extra = {}
        packed = None
        if prefill and past_key_values is None and routing is None:
            packed = self._packing(row_adapter, attention_mask, labels, used, use_cache, embeds)
        if packed is not None:  # padding-free training forward (molora/packing.py)
            embeds, position_ids = packed.pack(embeds), packed.pack(position_ids.expand(input_ids.shape))
            ctx = self.routing.route(packed.token_adapter[None], packed.n)
            row_adapter, used, attention_mask = packed.token_adapter[None], packed.pack(used), None
            extra["packed_rows"] = packed
        elif prefill and attention_mask is not None and input_ids.shape[1] >= 32 and embeds.device.type == "cpu":
            groups = LengthGroups.plan(attention_mask)  # rows of very different lengths: attention per bucket
            if groups is not None:
                extra["length_groups"] = groups
        with ctx, self._narrow_last_layer(row_adapter if used is not None else None, used):
            out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                      cache=past_key_values, use_cache=use_cache, **extra)
        hidden = out.last_hidden_state
        if self.routing.touch_all:  # see RoutingState.touch_all: unused encoders / projectors join with 0
            hidden = hidden + sum(0.0 * p.sum() for n, p in self.named_parameters()
                                  if p.requires_grad and not n.startswith("language_model.layers."))
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_logits(hidden) if return_logits or labels is None else None
        loss = None
        if labels is not None:
            labels = labels.to(hidden.device)
            if packed is not None:
                target = packed.pack(F.pad(labels[:, 1:], (0, 1), value=-100))[0]
                keep = target != -100
                loss = F.cross_entropy(loss_precision(self.lm_logits(hidden[0][keep])), target[keep], reduction=loss_reduction)
            elif logits is not None:
                loss = causal_lm_loss(logits, labels, reduction=loss_reduction)
            else:
                loss = self.labelled_loss(hidden, labels, reduction=loss_reduction)
        return MoLoRAOutput(logits=logits, loss=loss, cache=out.cache if use_cache else None,
                            row_types=row_types, hidden_states=None if used is not None else hidden)

    def _forward_split(self, batch: dict, row_types: list[str], frozen: list[int], rest: list[int],
                       reduction: str) -> MoLoRAOutput:
        """The loss of ``frozen`` rows (no trainable weight reaches them: ``molora/frozen_rows.py``)
        without autograd plus the loss of the ``rest`` with it; the same value and gradients as one pass."""
        if batch["attention_mask"] is None:
            batch["attention_mask"] = torch.ones_like(batch["input_ids"])
        with torch.no_grad():
            fixed = self(**row_subset(batch, frozen, with_media=False), row_types=[row_types[i] for i in frozen],
                         return_logits=False, loss_reduction="sum").loss
        loss = self(**row_subset(batch, rest, with_media=True), row_types=[row_types[i] for i in rest],
                    return_logits=False, loss_reduction="sum").loss
        loss = loss + fixed
        if reduction == "mean":
            loss = loss / (batch["labels"][:, 1:] != -100).sum().to(loss.device)
        return MoLoRAOutput(logits=None, loss=loss, row_types=row_types)

    def _packing(self, row_adapter, attention_mask, labels, used, use_cache, embeds):
        """The packed layout for a CPU training forward with padding (labels, loss only, no cache),
        or None: other forwards keep the padded layout (their outputs are per padded position)."""
        if used is None or labels is None or attention_mask is None or use_cache or embeds.device.type != "cpu" \
                or attention_mask.shape != embeds.shape[:2] or bool(attention_mask.all()):
            return None
        return PackedRows.plan(attention_mask, row_adapter)

    def _used_positions(self, labels, logits_to_keep, return_logits, attention_mask, shape):
        """[B, T] bool of the positions whose final hidden state is read (the last ``logits_to_keep``,
        or the labelled ones when no logits are returned), or None when all are (or when narrowing
        does not apply: activation checkpointing recomputes layers outside this forward)."""
        if self.language_model.is_activation_checkpointing:
            return None
        B, T = shape
        if labels is None and 0 < logits_to_keep < T:
            used = torch.zeros(B, T, dtype=torch.bool, device=self.device)
            used[:, -logits_to_keep:] = True
        elif labels is not None and not return_logits and not logits_to_keep:
            used = torch.zeros(B, T, dtype=torch.bool, device=self.device)
            used[:, :-1] = labels[:, 1:].to(self.device) != -100
        else:
            return None
        if attention_mask is not None:
            used &= attention_mask[:, -T:].bool()
        return used

    @contextmanager
    def _narrow_last_layer(self, row_adapter, used):
        """Run the last decoder layer's attention output projection and MLP only on the positions in
        ``used`` (its keys and values are still computed for every token, for attention and the
        cache). Nothing after the last layer mixes positions, so the used positions get the same
        values; the others hold partial sums that nobody reads. In generation's prefill that is
        one position per row (the last layer's o_proj + MLP are ~1/9 of the prefill's matmuls); in
        a training step with ``return_logits=False``, the labelled positions."""
        if used is None:
            yield
            return
        st = self.routing
        with st.route(row_adapter, used.shape[1], used):
            narrow = st.snapshot()
        layer = self.language_model.layers[-1]
        outer = []

        def pre(_mod, _args):
            outer.append(st.snapshot())
            st.load(narrow)

        def post(_mod, _args, _out):
            if outer:
                st.load(outer.pop())

        hooks = [layer.self_attn.o_proj.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of ``hidden`` [..., H] as one 2-D matmul that reads the (tied) output embedding in
        place: a strided [B, 1, H] slice (``logits_to_keep=1``) through a batched matmul can copy the
        transposed [V, H] weight on every call (200,064 x 3072 per generated token at full size)."""
        weight = self.language_model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        flat = hidden.reshape(-1, hidden.shape[-1]).to(weight.device)
        return F.linear(flat, weight).view(*hidden.shape[:-1], weight.shape[0])

    def labelled_loss(self, hidden: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy from the hidden states of the labelled positions only."""
        target = labels[:, 1:]
        keep = target != -100
        logits = self.lm_logits(hidden[:, :-1][keep])
        return F.cross_entropy(loss_precision(logits), target[keep], reduction=reduction)

    def step_routing(self, row_types: list[str]) -> tuple:
        """The routing snapshot of a one-token-per-row decode step (reused for every step)."""
        with self.routing.route(self.router.adapter_index(row_types, device=self.device), 1, None):
            return self.routing.snapshot()

    @staticmethod
    def _positions(attention_mask, shape, past_key_values) -> torch.Tensor:
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if attention_mask is None:
            return torch.arange(past, past + shape[1]).unsqueeze(0).expand(shape[0], -1)
        # positions count only real tokens, so a left-padded row gets the positions it has alone
        pos = attention_mask.long().cumsum(-1) - 1
        return pos.clamp(min=0)[:, -shape[1]:]

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

