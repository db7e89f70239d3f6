"""MoLoRAProcessor: chat template, placeholder expansion, HD crops, log-mel, batching, decoding.

Input: transformers-style messages (one conversation or a list of them), or transformers'
processor call: ``text=`` strings with one placeholder per media item -- ``<|image|>`` /
``<|audio|>`` (transformers' style; also the tokenizer's own ``image_token`` / ``audio_token``
when it declares one), or molora's ``<|image_1|>`` / ``<|audio_1|>`` -- plus ``images=`` /
``audio=`` (or ``audios=``) in order of appearance, ``dynamic_hd=`` (crops per image for this
call), ``sampling_rate=``. Output: a ``transformers.BatchFeature`` (a mapping with ``.to()`` and
attribute access) whose keys are the forward keywords of both MoLoRAModel and transformers'
Phi4MultimodalForCausalLM, equal to what transformers' Phi4MultimodalProcessor gives for the
same call (``tests/test_processor_transformers_call.py``).

Media as people hold them: images as PIL images, numpy arrays / torch tensors (``[H, W]``,
``[C, H, W]``, ``[H, W, C]``; uint8, or floats in [0, 1]) or paths (``load_image``); audio as 1-D
arrays / tensors (at ``sampling_rate``), ``(array, rate)`` tuples, ``{"array", "sampling_rate"}``
dicts as ``datasets`` yields them, or paths (``AudioFeatureExtractor``). URLs are refused: molora
works offline. ``images=`` may be a 4-D array (a batch); ``audios=`` a 2-D array is a batch of
clips, one per row, as transformers reads it (``as_clip_list``).

Generation batches are left-padded; training batches (``return_labels=True``) are
right-padded and labelled only on assistant turns (content and its ``<|end|>``).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .config import MoLoRAConfig
from .errors import ArgumentError, MoLoRAError, PlaceholderError
from .loss import IGNORE_INDEX

OWN_FILE = "molora_processor.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
ROLES = ("system", "user", "assistant")


class MoLoRAProcessor:
    """Each modality of the config (``molora/modalities``) contributes its part: ``image_processor``
    (the HD transform), ``audio_processor`` (the log-mel front end), ``<name>_processor`` for others."""

    def __init__(self, config: MoLoRAConfig, tokenizer=None, chat_template: str | None = None):
        self.config = config
        self.tokenizer = tokenizer
        # a checkpoint's own chat template (jinja, as transformers renders it); None: the built-in
        # Phi-4 format <|role|>content<|end|>...<|assistant|>
        self.chat_template = chat_template
        self.modalities = {m.name: m for m in config.modality_entries()}
        self.parts = {name: m.processor(config) for name, m in self.modalities.items()}
        self.token_ids = {name: m.token_id(config) for name, m in self.modalities.items()}
        # <|image|> (transformers) or <|image_N|> (molora): group 1 is the modality; items in order
        self.placeholder = re.compile(r"<\|(" + "|".join(map(re.escape, self.modalities)) + r")(?:_(\d+))?\|>")
        self.pad_token_id = config.backbone.pad_token_id

    def __getattr__(self, name: str):
        # image_processor, audio_processor, <modality>_processor, <modality>_token_id
        parts = self.__dict__.get("parts", {})
        if name.endswith("_processor") and name[: -len("_processor")] in parts:
            return parts[name[: -len("_processor")]]
        if name.endswith("_token_id") and name[: -len("_token_id")] in self.__dict__.get("token_ids", {}):
            return self.token_ids[name[: -len("_token_id")]]
        if name.endswith("_token") and name[: -len("_token")] in self.__dict__.get("token_ids", {}):
            return self._declared_token(name[: -len("_token")]) or f"<|{name[: -len('_token')]}|>"
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    @property
    def model_input_names(self) -> list[str]:
        """The keys a full batch can hold, as transformers' processor lists them: each part's, then
        the tokenizer's."""
        text = list(getattr(self.tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"])
        return [k for part in self.parts.values() for k in part.model_input_names] + text

    def _declared_token(self, name: str) -> str | None:
        """The tokenizer's own placeholder for modality ``name`` (transformers' ``image_token``), if any."""
        token = getattr(self.tokenizer, f"{name}_token", None) if self.tokenizer is not None else None
        return token if isinstance(token, str) and token else None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: MoLoRAConfig, tokenizer=None) -> "MoLoRAProcessor":
        if tokenizer is None and config.tokenizer == "bytes":
            from .tokenizer import build_byte_tokenizer

            tokenizer = build_byte_tokenizer()
        elif tokenizer is None and config.tokenizer == "tiny-bpe":
            from .tokenizer import load_tiny_tokenizer

            tokenizer = load_tiny_tokenizer()
        return cls(config, tokenizer)

    @classmethod
    def from_pretrained(cls, path_or_id: str, **kwargs) -> "MoLoRAProcessor":
        """molora's processor file (``molora_processor.json``), else the model's config with the
        repository's own processor files applied (``preprocessor_config.json``: crops per image,
        checked crop / audio settings; see molora/processor_files.py); its tokenizer files and
        chat template."""
        from .checkpoint import load_config, resolve_path
        from .presets import PRESETS
        from .processor_files import apply_processor_files, read_chat_template

        if path_or_id in PRESETS:
            return cls.from_config(MoLoRAConfig.preset(path_or_id), **kwargs)
        path = resolve_path(path_or_id)
        own = path / OWN_FILE
        if own.exists():
            config = MoLoRAConfig.from_json(own)
        else:
            config, _ = apply_processor_files(load_config(path), path)
        template = kwargs.pop("chat_template", None)
        processor = cls._with_tokenizer(config, path, kwargs.pop("tokenizer", None))
        processor.chat_template = template or read_chat_template(path, processor.tokenizer)
        return processor

    @classmethod
    def _with_tokenizer(cls, config: MoLoRAConfig, path: Path, tokenizer) -> "MoLoRAProcessor":
        if tokenizer is None:
            if config.tokenizer in ("bytes", "tiny-bpe") and not (path / "tokenizer.json").exists():
                return cls.from_config(config)
            elif config.tokenizer in ("bytes", "tiny-bpe"):  # our own tokenizer.json: no Auto* look-up of config.json
                from transformers import PreTrainedTokenizerFast

                tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
            elif (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(path))
        return cls(config, tokenizer)

    def save_pretrained(self, directory) -> list[str]:
        """Write the tokenizer files, the chat template, ``molora_processor.json`` and transformers'
        ``processor_config.json`` (see molora/processor_files.py); returns the names of the files written."""
        from .processor_files import write_transformers_files

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        written = []
        if self.tokenizer is not None:
            written += [Path(f).name for f in self.tokenizer.save_pretrained(str(d)) if Path(f).is_file()]
        if self.chat_template and self.chat_template != getattr(self.tokenizer, "chat_template", None):
            (d / CHAT_TEMPLATE_FILE).write_text(self.chat_template)  # read back as the tokenizer's template
            written.append(CHAT_TEMPLATE_FILE)
        self.config.to_json(d / OWN_FILE)
        written.append(OWN_FILE)
        written += write_transformers_files(d, self.config, self.tokenizer)  # for transformers' AutoProcessor
        return sorted(set(written))

    # -- chat template -----------------------------------------------------------------------
    def _render_parts(self, content, conv_idx: int, msg_idx: int, media: dict[str, list]) -> str:
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            raise MoLoRAError(f"content must be a string or a list of parts, got {type(content).__name__}",
                              f"conversation[{conv_idx}].messages[{msg_idx}]")
        out = []
        for j, part in enumerate(content):
            item = f"conversation[{conv_idx}].messages[{msg_idx}].content[{j}]"
            if not isinstance(part, dict):
                raise MoLoRAError(f"a content part must be a dict like {{'type': 'text', 'text': ...}}, got "
                                  f"{type(part).__name__}", item)
            kind = part.get("type")
            entry = next((m for m in self.modalities.values() if m.content_type == kind), None)
            if kind == "text":
                if "text" not in part:
                    raise MoLoRAError("text part has no 'text' key", item)
                if not isinstance(part["text"], str):
                    raise MoLoRAError(f"'text' must be a string, got {type(part['text']).__name__}", item)
                out.append(part["text"])
            elif entry is not None:
                value = next((part[k] for k in (kind, "path", "url") if k in part), None)
                if value is None:
                    raise MoLoRAError(f"{kind} part has no '{kind}' ({entry.hint})", item)
                media[entry.name].append(value)
                out.append(f"<|{entry.name}_{len(media[entry.name])}|>")
            else:
                kinds = ", ".join(["text"] + [m.content_type for m in self.modalities.values()])
                raise MoLoRAError(f"unknown content part type {kind!r} (expected {kinds})", item)
        return "".join(out)

    def render(self, conversation: list[dict], conv_idx: int = 0, add_generation_prompt: bool = True):
        """Render one conversation: list of (role, text) segments and its media, in order."""
        media: dict[str, list] = {name: [] for name in self.modalities}
        segments = []
        for i, msg in enumerate(conversation):
            where = f"conversation[{conv_idx}].messages[{i}]"
            if not isinstance(msg, dict):
                raise MoLoRAError(f"a message must be a dict with 'role' and 'content', got {type(msg).__name__}",
                                  where)
            for key in ("role", "content"):
                if key not in msg:
                    raise MoLoRAError(f"message has no {key!r} key (a message is {{'role': ..., 'content': ...}})",
                                      where)
            if msg["role"] not in ROLES:
                raise MoLoRAError(f"role must be one of {ROLES}, got {msg['role']!r}", where)
            segments.append((msg["role"], self._render_parts(msg["content"], conv_idx, i, media)))
        if add_generation_prompt and (not segments or segments[-1][0] != "assistant"):
            segments.append(("assistant", None))
        return segments, media

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = True) -> str:
        segments, _ = self.render(conversation, add_generation_prompt=add_generation_prompt)
        if self.chat_template:
            return self._template_text(segments, add_generation_prompt)
        return _builtin_text(segments)

    def _template_text(self, segments, add_generation_prompt: bool) -> str:
        """The conversation through the checkpoint's own chat template (media already placeholders)."""
        if self.tokenizer is None:
            raise MoLoRAError("rendering a chat template needs the tokenizer", "processor")
        messages = [{"role": r, "content": t} for r, t in segments if t is not None]
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def _check_template_labels(self, segments, item: str) -> None:
        """Training batches label the built-in format's assistant turns; a chat template that renders
        conversations otherwise would be trained on a format it never serves."""
        text = self._template_text(segments, add_generation_prompt=False)
        plain = _builtin_text(segments)
        if text not in (plain, plain + (self.tokenizer.eos_token or "")):
            raise MoLoRAError("the chat template renders this conversation differently from the Phi-4 format "
                              "(<|role|>content<|end|>) that training batches label; pass chat_template=None "
                              "to train on the built-in format", item)

    # -- tokenisation with placeholder expansion ----------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _expand(self, text: str, counts: dict[str, list[int]], used: dict[str, int], item: str) -> list[int]:
        ids: list[int] = []
        last = 0
        for m in self.placeholder.finditer(text):
            ids += self._encode_text(text[last:m.start()])
            kind = m.group(1)
            k = used[kind]
            if k >= len(counts[kind]):
                raise PlaceholderError(
                    f"more <|{kind}|> / <|{kind}_N|> placeholders than {kind}s given ({len(counts[kind])})", item)
            used[kind] += 1
            ids += [self.token_ids[kind]] * counts[kind][k]
            last = m.end()
        ids += self._encode_text(text[last:])
        return ids

    # -- main entry -------------------------------------------------------------------------------
    def __call__(self, messages=None, *, text=None, images=None, audio=None, audios=None,
                 return_labels: bool = False, add_generation_prompt: bool | None = None, padding=True,
                 padding_side: str | None = None, sampling_rate: int | None = None, dynamic_hd: int | None = None,
                 return_tensors: str | None = "pt", **items):
        """Messages, or transformers' call: ``text=`` with ``images=`` / ``audio=`` (``audios=`` is the
        same; ``<name>s=`` for a further modality ``name``), items in order of appearance of the
        placeholders. Returns a ``transformers.BatchFeature``."""
        from transformers import BatchFeature

        if self.tokenizer is None:
            raise MoLoRAError("this processor has no tokenizer; pass tokenizer=... (media-only processors "
                              "offer image_processor / audio_processor)", "processor")
        if add_generation_prompt is None:
            add_generation_prompt = not return_labels
        if audio is not None and audios is not None:
            raise ArgumentError("give audio= or audios= (the same argument), not both", "audio")
        if padding not in (True, False, "longest", "do_not_pad"):
            raise ArgumentError(f"must be True / 'longest' (pad to the longest row) or False, got {padding!r}",
                                "padding")
        given = {"image": images, "audio": audio if audio is not None else audios}
        for key, value in items.items():  # <name>s= of a further modality; videos= as transformers' call has it
            if not (key.endswith("s") and (key[:-1] in self.modalities or key == "videos")):
                raise TypeError(f"MoLoRAProcessor() got an unexpected keyword argument {key!r}")
            given[key[:-1]] = value
        for name, value in given.items():
            if value is not None and name not in self.modalities:
                raise ArgumentError(f"this model takes no {name} (its modalities: {', '.join(self.modalities)})",
                                    name)
        rows: list[tuple[list[tuple[str, str | None]], dict[str, list]]] = []
        if messages is not None:
            convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
            for c, conv in enumerate(convs):
                segments, media = self.render(conv, c, add_generation_prompt)
                if self.chat_template and return_labels:
                    self._check_template_labels(segments, f"conversation[{c}]")
                elif self.chat_template:  # the checkpoint's own template, as raw text
                    segments = [(None, self._template_text(segments, add_generation_prompt))]
                rows.append((segments, media))
        elif text is not None:
            if not (isinstance(text, str) or isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)):
                raise ArgumentError(f"must be a string or a list of strings, got {type(text).__name__}", "text")
            texts = [self._with_molora_placeholders(t) for t in ([text] if isinstance(text, str) else text)]
            pools = {name: [] if given.get(name) is None else m.as_items(given[name])
                     for name, m in self.modalities.items()}
            for c, t in enumerate(texts):
                found = [m.group(1) for m in self.placeholder.finditer(t)]
                media = {}
                for name in self.modalities:
                    k = found.count(name)
                    media[name], pools[name] = pools[name][:k], pools[name][k:]
                rows.append(([(None, t)], media))
            left = {name: len(v) for name, v in pools.items() if v}
            if left:
                raise PlaceholderError(" and ".join(f"{n} {name}(s)" for name, n in left.items())
                                       + " have no placeholder in the text", "text")
        else:
            raise MoLoRAError("give messages, or text= (with images= / audios=)", "processor")

        out: dict[str, Any] = {}
        all_counts: dict[str, list[int]] = {}
        for name, entry in self.modalities.items():
            flat = [x for _, m in rows for x in m[name]]
            all_counts[name] = []
            if flat:
                tensors, all_counts[name] = entry.process(self.parts[name], flat, sampling_rate=sampling_rate,
                                                          dynamic_hd=dynamic_hd)
                out.update(tensors)

        seqs, labs = [], []
        offsets = {name: 0 for name in self.modalities}
        for c, (segments, media) in enumerate(rows):
            counts = {}
            for name in self.modalities:
                n = len(media[name])
                counts[name] = all_counts[name][offsets[name]:offsets[name] + n]
                offsets[name] += n
            used = {name: 0 for name in self.modalities}
            ids: list[int] = []
            lab: list[int] = []
            for role, body in segments:
                if role is None:  # raw text= input
                    piece = self._expand(body, counts, used, f"text[{c}]")
                    ids += piece
                    lab += [IGNORE_INDEX] * len(piece)
                    continue
                head = self._encode_text(f"<|{role}|>")
                piece = [] if body is None else self._expand(body, counts, used, f"conversation[{c}]") + \
                    self._encode_text("<|end|>")
                ids += head + piece
                lab += [IGNORE_INDEX] * len(head) + (piece if role == "assistant" else [IGNORE_INDEX] * len(piece))
            for kind in self.modalities:
                if used[kind] != len(counts[kind]):
                    raise PlaceholderError(f"{len(counts[kind])} {kind}(s) given but {used[kind]} <|{kind}|> / "
                                           f"<|{kind}_N|> placeholder(s) in the prompt", f"conversation[{c}]")
            seqs.append(ids)
            labs.append(lab)

        side = padding_side or ("right" if return_labels else "left")
        n = max(len(s) for s in seqs)
        if padding in (False, "do_not_pad") and any(len(s) != n for s in seqs):
            raise ArgumentError(f"rows have {sorted({len(s) for s in seqs})} tokens: one tensor needs "
                                "padding=True", "padding")
        input_ids = torch.full((len(seqs), n), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), n), dtype=torch.long)
        labels = torch.full((len(seqs), n), IGNORE_INDEX, dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labs)):
            sl = slice(n - len(s), n) if side == "left" else slice(0, len(s))
            input_ids[i, sl] = torch.tensor(s, dtype=torch.long)
            attention_mask[i, sl] = 1
            labels[i, sl] = torch.tensor(l, dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attention_mask, **out}
        if return_labels:
            out["labels"] = labels
        return BatchFeature(out, tensor_type=return_tensors)

    def _with_molora_placeholders(self, text: str) -> str:
        """``text`` with the tokenizer's own placeholder tokens (transformers' ``image_token``, e.g.
        ``<|endoftext10|>``) written as ``<|image|>``."""
        for name in self.modalities:
            token = self._declared_token(name)
            if token and not self.placeholder.fullmatch(token):
                text = text.replace(token, f"<|{name}|>")
        return text

    # -- decoding ---------------------------------------------------------------------------------
    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=skip_special_tokens)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def _builtin_text(segments) -> str:
    return "".join(f"<|{r}|>" + ("" if t is None else t + "<|end|>") for r, t in segments)
