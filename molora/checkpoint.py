"""Checkpoint I/O: read and write molora's layout, the official ``phi4mm`` layout and the
transformers-native ``phi4_multimodal`` layout (+ PEFT adapter folders); assemble a new model
from a Phi-4-mini checkpoint and an open_clip SigLIP checkpoint. safetensors only.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from . import checkpoint_layouts, peft_adapters, placement, shard_writer, stored_tensors
from .config import MoLoRAConfig
from .errors import CheckpointError, ConfigError
from .presets import TINY_BPE_VOCAB
from .staging import staged
from .stored_tensors import StoredTensor, stored_dtype, weight_shapes  # noqa: F401 (stored_dtype: API)
from .weight_files import (ADAPTER_WEIGHTS, INDEX, QUANTIZED_BASE_RECORD,  # noqa: F401 (names other modules import)
                           WEIGHTS)

LAYOUTS = ("molora", "phi4mm", "phi4_multimodal")
# what a hub checkpoint brings: weights, configs, tokenizer, adapters, and the official folder's other files
# a phi4mm export carries over (remote-code modules are fetched as files, never imported)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py", "*.md", "LICENSE", "vision-lora/*",
                "speech-lora/*"]


def resolve_path(path_or_id: str | os.PathLike) -> Path:
    """A local directory, or a hub id fetched to the local cache (needs network)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError("expected a checkpoint directory, got a file", str(p))
    s = str(path_or_id)
    if s.count("/") != 1 or s.startswith((".", "/")):
        raise CheckpointError("no such directory (and not a hub id of the form owner/name)", s)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(s, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # offline, unknown repo, ...
        raise CheckpointError(f"cannot fetch it from the hub ({type(e).__name__}: {e}); download the repository "
                              "elsewhere and pass its local path", s) from None


def is_preset(path_or_id) -> bool:
    """A preset name (``tiny``, ...) that is not also a local path."""
    from .presets import PRESETS

    return str(path_or_id) in PRESETS and not Path(str(path_or_id)).expanduser().exists()


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError("missing config.json", str(path.parent)) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"invalid JSON ({e})", str(path)) from None
    except UnicodeDecodeError:
        raise CheckpointError("not a text (JSON) file", str(path)) from None
    if not isinstance(d, dict):
        raise CheckpointError(f"holds a JSON {type(d).__name__}, not an object {{\"model_type\": ...}}", str(path))
    return d


def detect_layout(directory: Path) -> str:
    from .backbones import family_of_model_type

    mt = _read_json(directory / "config.json").get("model_type")
    if mt in LAYOUTS or family_of_model_type(mt) is not None:  # a bare backbone's: refused by load_config
        return mt
    raise CheckpointError(f"unknown model_type {mt!r} (expected molora, phi4mm or phi4_multimodal)",
                          str(directory / "config.json"))


def _peft_folders(directory: Path) -> dict[str, Path]:
    """``<name>-lora/`` PEFT folders of a checkpoint; one with weights but no adapter_config.json is an error."""
    folders = {}
    for p in sorted(directory.glob("*-lora")):
        if not p.is_dir():  # skipping it would load the model without that adapter, silently
            raise CheckpointError("is a file, not a PEFT adapter folder (adapter_config.json + "
                                  f"{ADAPTER_WEIGHTS})", str(p))
        if (p / "adapter_config.json").exists():
            folders[p.name[: -len("-lora")]] = p
        elif (p / ADAPTER_WEIGHTS).exists():
            raise CheckpointError("an adapter folder with weights but no adapter_config.json", str(p))
    return folders


def load_config(path_or_id) -> MoLoRAConfig:
    """The config of a checkpoint (any layout); a field of the wrong type, or one the weights
    contradict, is an error naming config.json and the field."""
    directory = resolve_path(path_or_id)
    layout = detect_layout(directory)
    where = str(directory / "config.json")
    d = _read_json(directory / "config.json")
    try:
        return _config(d, layout, directory, str(path_or_id), where)
    except ConfigError as e:
        raise CheckpointError(str(e), where) from None


def _config(d: dict, layout: str, directory: Path, name: str, where: str) -> MoLoRAConfig:
    if layout not in LAYOUTS:
        raise CheckpointError(f"a bare {layout} checkpoint (Phi-4-mini, Llama, ...) is a backbone only: use "
                              "molora.checkpoint.assemble(config, backbone=..., vision=...)", str(directory))
    own = d if layout == "molora" else d.get("molora") if layout == "phi4mm" else None
    if own is not None:
        if not isinstance(own, dict):
            raise ConfigError(f"must be an object, got {type(own).__name__}", "molora")
        prefix = "" if layout == "molora" else "molora."
        backbone = own.get("backbone")
        if isinstance(backbone, dict):
            checkpoint_layouts.check_decoder_shapes(backbone, weight_shapes(directory), layout, f"{prefix}backbone.")
        try:
            return MoLoRAConfig.from_dict(own)
        except ConfigError as e:
            raise ConfigError(e.reason, prefix + (e.item or "config")) from None
    d = checkpoint_layouts.check_flat_config(d)
    shapes = weight_shapes(directory)
    checkpoint_layouts.check_decoder_shapes(d, shapes, layout)
    vocab = d.get("vocab_size", 0)
    tok = "bytes" if vocab < 1000 else "tiny-bpe" if vocab == TINY_BPE_VOCAB else name
    if layout == "phi4mm":
        return checkpoint_layouts.from_phi4mm_config(d, tokenizer=tok, shapes=shapes, where=where)
    config = checkpoint_layouts.from_transformers_config(d, {}, tokenizer=tok)
    adapters = {name: peft_adapters.spec_from_peft_folder(folder, config.backbone)
                for name, folder in _peft_folders(directory).items()}
    return checkpoint_layouts.from_transformers_config(d, adapters, tokenizer=tok)


def load_state_dict(directory: Path, layout: str, config: MoLoRAConfig) -> dict[str, StoredTensor]:
    """molora key -> the stored tensor it comes from (headers only: nothing is read yet)."""
    raw = stored_tensors.stored_tensors(directory)
    if layout == "molora":
        return raw
    if layout == "phi4mm":
        return {checkpoint_layouts.from_phi4mm_key(k): v for k, v in raw.items()}
    sd = checkpoint_layouts.from_transformers_state_dict(raw, config)
    for name, folder in _peft_folders(directory).items():
        sd.update(peft_adapters.adapter_tensors(folder, name, config.adapters[name], config.backbone,
                                                stored_tensors.stored_adapter(folder)))
    return sd


def stored_model(directory: Path) -> tuple[MoLoRAConfig, dict[str, StoredTensor]]:
    """A checkpoint's config and its state dict as stored tensors, checked against the config and in the
    model's own key order (headers only: nothing is read)."""
    if _quantized_folder(directory) is not None:
        raise CheckpointError(f"a quantised-base folder: it holds no base weights ({QUANTIZED_BASE_RECORD} names "
                              f"them), only what was trained; convert the original base instead", str(directory))
    config = load_config(directory)
    model = build_empty(config)
    return config, _checked(model, load_state_dict(directory, detect_layout(directory), config), str(directory))


def build_empty(config: MoLoRAConfig):
    from .model import MoLoRAModel

    with torch.device("meta"):
        return MoLoRAModel(config)


def _checked(model, sd: dict, where: str) -> dict:
    """``sd`` (tensors or stored tensors) in the model's key order, after checking keys and shapes."""
    expected = model.state_dict()
    tied = config_tied(model)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected and not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not match the config: {len(missing)} missing (e.g. {missing[:4]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:4]})", where)
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise CheckpointError(f"shape mismatch for {k}: checkpoint {tuple(sd[k].shape)}, model {tuple(v.shape)}",
                                  where)
    return {k: sd[k] for k in expected}


def _materialize(model, sd: dict, where: str) -> None:
    """Load ``sd`` (tensors, or stored tensors read now: memory-mapped as stored, or cast one by one) into
    the meta ``model``."""
    model.load_state_dict(stored_tensors.read(_checked(model, sd, where)), assign=True, strict=True)
    _rebuild_buffers(model)
    model.freeze_base()


def config_tied(model) -> bool:
    return model.config.backbone.tie_word_embeddings


def _rebuild_buffers(model) -> None:
    """Non-persistent buffers (rotary frequencies, ...) are not in checkpoints: rebuild them on CPU."""
    for name, module in model.named_modules():
        for bname, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.device.type == "meta":
                fresh = _fresh_module_like(model, name)
                module._buffers[bname] = dict(fresh.named_buffers(recurse=False))[bname]
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise CheckpointError(f"tensors left unloaded: {left[:5]}", "model")


def _fresh_module_like(model, name: str):
    module = model.get_submodule(name)
    if module is model.language_model.rotary_emb:  # the backbone family's rotary embedding class
        return type(module)(config=module.config)
    if hasattr(module, "rebuild_buffers"):
        return module.rebuild_buffers()
    raise CheckpointError(f"cannot rebuild non-persistent buffers of {type(module).__name__}", name)


PRESET_WEIGHTS = Path(__file__).parent / "weights"


def preset_weights(name: str) -> Path | None:
    """The shipped pretrained parts of a preset (``molora/weights/<name>/model.safetensors``), if any."""
    f = PRESET_WEIGHTS / name / WEIGHTS
    return f if f.exists() else None


def load_preset(name: str, dtype=None, device=None):
    """A preset model: its shipped pretrained parts (tiny: backbone, vision tower, conformer; written by
    ``scripts/pretrain_tiny.py``) over a seed-0 initialisation of the rest (projectors, LoRAs), so the
    same call always gives the same model. A preset without shipped weights is a random model."""
    from safetensors.torch import load_file

    from .model import MoLoRAModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MoLoRAModel(MoLoRAConfig.preset(name))
    f = preset_weights(name)
    if f is not None:
        sd = load_file(str(f))
        own = model.state_dict()
        bad = [k for k, v in sd.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise CheckpointError(f"shipped weights do not fit the {name!r} preset ({len(bad)} tensor(s), e.g. "
                                  f"{bad[0]}); rerun scripts/pretrain_{name}.py", str(f))
        model.load_state_dict(sd, strict=False)
    return placement.place(model, placement.resolve_dtype(dtype), device, where=f"preset {name!r}").eval()


def load_model(path_or_id, dtype=None, device=None, *, torch_dtype=None, device_map=None, max_memory=None,
               quantization_config=None):
    """A model from a checkpoint directory (any layout), a hub id or a preset name, in eval mode.

    ``quantization_config``: "int8" / "int4" / "nf4" or transformers' ``TorchAoConfig`` /
    ``BitsAndBytesConfig``: the frozen decoder's linears are quantised as they load
    (``molora/quantization.py``); a folder saved from such a model (``quantized_base.json``) reloads
    its original base and quantises it again (``molora/quantized_checkpoint.py``).

    ``dtype`` / ``torch_dtype``: "auto" (default: as stored; a bfloat16 checkpoint stays bfloat16 and
    memory-mapped), a torch.dtype or its name. ``device_map``: one device, "auto" (accelerate, over the
    accelerators and the CPU) or accelerate's {module: device} dict; ``device`` is the same as a
    one-device ``device_map``. See molora/placement.py."""
    if device is not None and device_map is not None:
        raise CheckpointError("pass device or device_map, not both", "device_map")
    device_map = device if device_map is None else device_map
    if quantization_config is not None or _quantized_folder(path_or_id) is not None:
        return _load_quantized(path_or_id, quantization_config, dtype=dtype, torch_dtype=torch_dtype,
                               device_map=device_map, max_memory=max_memory)
    if is_preset(path_or_id):
        return load_preset(str(path_or_id), dtype=dtype if dtype is not None else torch_dtype, device=device_map)
    directory = resolve_path(path_or_id)
    layout = detect_layout(directory)
    config = load_config(directory)
    model = build_empty(config)
    target = placement.resolve_dtype(dtype, torch_dtype)
    sd = load_state_dict(directory, layout, config)
    if target is not None and placement.on_cpu(device_map):  # cast tensor by tensor as they are read
        sd = {k: v.cast(target) for k, v in sd.items()}
        placement.check_fits(sum(v.nbytes for v in sd.values() if v.dtype != v.stored), torch.device("cpu"),
                             str(directory))
    _materialize(model, sd, str(directory))
    return placement.place(model, target, device_map, max_memory, where=str(directory)).eval()


def _quantized_folder(path_or_id) -> dict | None:
    from .quantized_checkpoint import quantized_record

    return None if is_preset(path_or_id) or not Path(path_or_id).is_dir() else quantized_record(Path(path_or_id))


def _load_quantized(path_or_id, quantization_config, **load_kwargs):
    """`load_model` with a quantised frozen base: the float model loads (memory-mapped where stored in the
    dtype asked for), then each frozen linear is quantised in turn and its float weight freed, so the
    float model and the quantised one are never both held whole."""
    from .quantization import QuantizationSpec, quantize_frozen_base
    from .quantized_checkpoint import load_quantized

    spec = QuantizationSpec.of(quantization_config)
    record = _quantized_folder(path_or_id)
    if record is not None:
        return load_quantized(Path(path_or_id), record, spec, **load_kwargs)
    if is_preset(path_or_id) or not placement.on_cpu(load_kwargs["device_map"]):
        model = load_model(path_or_id, **load_kwargs)
        quantize_frozen_base(model, spec)
    else:
        model = _load_quantizing(resolve_path(path_or_id), spec, **load_kwargs)
    model.quantized_from = str(path_or_id) if is_preset(path_or_id) else str(resolve_path(path_or_id))
    return model.eval()


def _load_quantizing(directory: Path, spec, dtype=None, torch_dtype=None, device_map=None, max_memory=None):
    """A folder loaded on the CPU with its frozen base quantised linear by linear: everything else is read
    first, then each base linear's weight is read (in the dtype asked for), quantised and dropped, so
    at most one float base weight is held at a time."""
    from .quantization import frozen_base_linears, quantize_frozen_base

    config = load_config(directory)
    model = build_empty(config)
    target = placement.resolve_dtype(dtype, torch_dtype)
    sd = _checked(model, load_state_dict(directory, detect_layout(directory), config), str(directory))
    if target is not None:
        sd = {k: v.cast(target) for k, v in sd.items()}
    base = {f"{path}.{name}" for _, _, _, path in frozen_base_linears(model, spec) for name in ("weight", "bias")}
    model.load_state_dict(stored_tensors.read({k: v for k, v in sd.items() if k not in base}), assign=True,
                          strict=False)
    quantize_frozen_base(model, spec, read=lambda key: stored_tensors.read({key: sd[key]})[key])
    _rebuild_buffers(model)
    model.freeze_base()
    return placement.place(model, target, device_map, max_memory, where=str(directory))


# -- saving ------------------------------------------------------------------------------------------

_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
PEFT_FILES = frozenset({"adapter_config.json", ADAPTER_WEIGHTS, "README.md"})


def model_entry(entry: Path) -> bool:
    """Whether an entry of a checkpoint folder is one `save_model` writes: config.json, the weights
    and their index, a quantised base's record, an ``<adapter>-lora/`` folder of PEFT files only. A new
    save replaces these (and removes those it does not write again: the shards of an earlier, bigger save,
    an adapter the model no longer has); it leaves every other entry (processor files, the user's own) as it is."""
    if entry.is_dir() and not entry.is_symlink():
        return entry.name.endswith("-lora") and all(p.is_file() and p.name in PEFT_FILES for p in entry.iterdir())
    return (entry.name in ("config.json", WEIGHTS, INDEX, QUANTIZED_BASE_RECORD)
            or _SHARD.fullmatch(entry.name) is not None)


def _dtype_fields(dtype: torch.dtype) -> dict:
    """``torch_dtype`` (and transformers 5's ``dtype``) for config.json: the dtype the weights are saved in."""
    name = str(dtype).removeprefix("torch.")
    return {"torch_dtype": name, "dtype": name}


def write_weights(sd: dict, directory: Path, max_shard_size: int | str = "5GB", progress=None) -> list[str]:
    """``model.safetensors``, or shards ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``
    when the weights exceed ``max_shard_size``, as Hugging Face writes them (huggingface_hub's
    save_torch_state_dict), one shard in memory at a time. Returns the file names written."""
    return shard_writer.write_shards(sd, directory, max_shard_size, progress)


def save_model(model, directory, layout: str = "molora", peft_folders: bool = True,
               max_shard_size: int | str = "5GB", safe_serialization: bool = True,
               progress: bool | None = None, base=None, without_base: bool = False) -> list[str]:
    """Write ``model`` to ``directory`` in ``layout`` (molora | phi4mm | phi4_multimodal); returns the
    files written (paths relative to ``directory``).

    A model with a quantised base is refused unless ``without_base=True``: then everything but the
    quantised linears is written, with a record of the original base (``molora/quantized_checkpoint.py``).

    molora and phi4mm keep the LoRA weights inside the shards; every layout also gets PEFT
    folders ``<adapter>-lora/`` (the transformers-native layout keeps adapters only there).
    Weights above ``max_shard_size`` are sharded with an index, as transformers does; config.json
    records ``torch_dtype``. Written one shard at a time (no second copy of the model: a shard is
    copied to the CPU only when it is written) into a staging folder, then moved into place (see
    `write_checkpoint`). ``progress``: a bytes progress bar (None: on a terminal, for models of 1 GiB
    or more). ``base`` (phi4mm only): the official folder whose non-weight files (remote code,
    tokenizer, generation and processor configs) are copied in unchanged; without it a warning names
    what the folder lacks (`molora.official_folder`).
    """
    if not safe_serialization:
        raise CheckpointError("molora writes safetensors only (safe_serialization=False is not supported)",
                              str(directory))
    if getattr(model, "quantization", None) is not None:
        from .quantized_checkpoint import save_quantized

        return save_quantized(model, directory, layout, peft_folders, max_shard_size, progress, without_base)
    written = write_checkpoint(model.state_dict(), model.config, model.dtype, directory, layout, peft_folders,
                               max_shard_size, progress, base=base)
    if layout == "phi4mm":
        from .official_folder import missing_warning

        note = missing_warning(Path(directory))
        if note:
            import warnings

            warnings.warn(note, UserWarning, stacklevel=3)
    return written


def check_layout_holds(cfg: MoLoRAConfig, layout: str) -> None:
    """The official layouts (phi4mm, phi4_multimodal) describe one model: a Phi-3 decoder with an image and
    an audio encoder. Anything else is written in the molora layout; transformers and vLLM would fill a
    missing encoder with random weights and load without an error."""
    if layout == "molora":
        return
    if cfg.backbone.family != "phi3":
        raise CheckpointError(f"the {layout} layout holds a Phi-3 (phi3 family) decoder; a {cfg.backbone.family} "
                              "backbone is written in the molora layout", layout)
    if sorted(cfg.modalities) != ["audio", "image"]:
        raise CheckpointError(f"the {layout} layout holds an image and an audio encoder; a model with modalities "
                              f"{', '.join(sorted(cfg.modalities))} is written in the molora layout", layout)


def write_checkpoint(sd: dict, cfg: MoLoRAConfig, dtype: torch.dtype, directory, layout: str = "molora",
                     peft_folders: bool = True, max_shard_size: int | str = "5GB",
                     progress: bool | None = None, base=None) -> list[str]:
    """``save_model`` for a state dict in molora's keys whose values are tensors or ``StoredTensor``s (read
    from their files shard by shard: ``molora convert`` rewrites a checkpoint of any size this way).
    Written to a staging folder, then moved into place: into an existing folder, only the entries
    `model_entry` accepts are replaced (processor files and the user's own files stay); a failure
    leaves the folder as it was, and a full disk is ``OSError(ENOSPC)``."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"layout must be one of {', '.join(LAYOUTS)}", layout)
    check_layout_holds(cfg, layout)
    owned = model_entry
    if layout == "phi4mm":
        from . import official_folder

        base = official_folder.check_base(base, directory) if base is not None else None
        extra = official_folder.owned([e.name for e in official_folder.carried_entries(base)] if base else [])
        owned = lambda entry: model_entry(entry) or extra(entry)  # noqa: E731
    elif base is not None:
        raise CheckpointError("a base folder is for the phi4mm layout only", str(base))
    with staged(Path(directory), owned=owned) as tmp:
        return write_checkpoint_files(sd, cfg, dtype, tmp, layout, peft_folders, max_shard_size, progress,
                                      name=Path(directory).name, base=base)


def write_checkpoint_files(sd: dict, cfg: MoLoRAConfig, dtype: torch.dtype, directory: Path, layout: str = "molora",
                           peft_folders: bool = True, max_shard_size: int | str = "5GB",
                           progress: bool | None = None, name: str | None = None, base: Path | None = None,
                           tokenizer=None) -> list[str]:
    """The files of `write_checkpoint`, written into ``directory`` as they are (no staging); returns
    their paths relative to it. ``name``: the folder named on the progress bar. phi4mm: also
    generation_config.json (eos from ``tokenizer`` for a non-official vocabulary), then every
    non-weight entry of ``base`` (a checked official folder) copied over unchanged."""
    weights, config = layout_contents(sd, cfg, dtype, layout, base)
    peft_folders = peft_folders or layout == "phi4_multimodal"
    lora = [t for a in peft_adapters.adapter_state_dicts(sd).values() for t in a.values()] if peft_folders else []
    total = stored_tensors.total_bytes([*weights.values(), *lora])
    bar = shard_writer.Progress(total, f"writing {name or directory.name}",
                                (None if total >= 2**30 else False) if progress is None else progress)
    try:
        written = write_weights(weights, directory, max_shard_size, bar)
        (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        written.append("config.json")
        if layout == "phi4mm":
            from . import official_folder

            written += official_folder.write_json(
                directory, {official_folder.GENERATION: official_folder.generation_config(cfg, tokenizer)})
        if peft_folders:
            written += [str(Path(f).relative_to(directory))
                        for f in export_peft(None, directory, sd=sd, config=cfg, progress=bar)]
    finally:
        bar.close()
    if layout == "phi4mm" and base is not None:
        from .official_folder import carry_over

        carried = carry_over(base, directory)
        written = [f for f in written if f not in carried] + carried
    return written


def layout_contents(sd: dict, cfg: MoLoRAConfig, dtype: torch.dtype, layout: str,
                    base: Path | None = None) -> tuple[dict, dict]:
    """The weights (their keys in ``layout``; values as given: tensors, stored or meta tensors) and
    the config.json of a checkpoint in ``layout``; nothing is written."""
    if layout == "molora":
        return sd, {**cfg.to_dict(), **_dtype_fields(dtype)}
    if layout == "phi4mm":
        from .official_folder import official_config

        return ({checkpoint_layouts.to_phi4mm_key(k): v for k, v in sd.items()},
                {**official_config(cfg, base), **_dtype_fields(dtype)})
    return (checkpoint_layouts.to_transformers_state_dict(sd),
            {**checkpoint_layouts.to_transformers_config(cfg), **_dtype_fields(dtype)})


def peft_contents(sd: dict, cfg: MoLoRAConfig) -> dict[str, tuple[dict, dict]]:
    """{adapter: (adapter_config.json, {PEFT key: tensor})}: the PEFT folders of `export_peft`, unwritten."""
    return {name: (peft_adapters.peft_config(name, cfg.adapters[name]), tensors)
            for name, tensors in peft_adapters.adapter_state_dicts(sd).items()}


def export_peft(model, directory, adapters: list[str] | None = None, sd: dict | None = None, *,
                config: MoLoRAConfig | None = None, progress=None) -> list[Path]:
    """Write each adapter as a PEFT folder ``<directory>/<name>-lora/`` that peft and vLLM load;
    returns the files written. ``sd`` and ``config`` stand for the model's (``model`` may then be None):
    a state dict of tensors or ``StoredTensor``s."""
    sd = model.state_dict() if sd is None else sd
    cfg = model.config if config is None else config
    out = []
    for name, (adapter_config, tensors) in peft_contents(sd, cfg).items():
        if adapters is not None and name not in adapters:
            continue
        folder = Path(directory) / f"{name}-lora"
        folder.mkdir(parents=True, exist_ok=True)
        shard_writer.write_file(tensors, folder / "adapter_model.safetensors", progress)
        (folder / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2))
        out += [folder / "adapter_config.json", folder / "adapter_model.safetensors"]
    return out
