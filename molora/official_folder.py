"""The ``phi4mm`` export as a drop-in for the official Phi-4-multimodal-instruct folder.

The official folder holds, beside the weights and config.json: the remote-code modules its
``auto_map`` names (``configuration_phi4mm.py``, ``modeling_phi4mm.py``, ``processing_phi4mm.py``
and the encoders they import), ``generation_config.json`` (eos ``<|end|>`` 200020 and
``<|endoftext|>`` 199999), the tokenizer files (``tokenizer.json``, ``tokenizer_config.json``,
``vocab.json``, ``merges.txt``, ``added_tokens.json``, ``special_tokens_map.json``),
``preprocessor_config.json`` / ``processor_config.json`` (the remote code's processor classes),
the PEFT folders ``vision-lora/`` / ``speech-lora/``, and documents (README.md, LICENSE, ...).

An export takes these from a *base* folder (an official checkpoint, or the source of a
conversion from one): every non-weight file of it is copied unchanged, remote code included (never
imported or run here); config.json keeps the base's own keys and takes molora's values for the
model's shape. Without a base, molora writes what it derives (config.json with the official key
set, generation_config.json, the official processor files when a processor is saved) and names
what the folder still lacks (`missing`).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import MoLoRAConfig
from .errors import CheckpointError
from .weight_files import INDEX

GENERATION = "generation_config.json"
PREPROCESSOR = "preprocessor_config.json"
PROCESSOR = "processor_config.json"
# the modules the official auto_map and processor files name, and the encoders they import
REMOTE_CODE = ("configuration_phi4mm.py", "modeling_phi4mm.py", "processing_phi4mm.py",
               "speech_conformer_encoder.py", "vision_siglip_navit.py")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# config.json keys a base folder's value wins for: they describe the folder, not the model's shapes
BASE_KEYS = ("_name_or_path", "auto_map", "transformers_version", "_attn_implementation")
# the official generation stops on <|end|> and <|endoftext|>
OFFICIAL_EOS = (200020, 199999)
# the official preprocessor_config.json / processor_config.json (processor classes from processing_phi4mm.py)
_PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_phi4mm.Phi4MMProcessor"}
_PREPROCESSOR_AUTO_MAP = {"AutoFeatureExtractor": "processing_phi4mm.Phi4MMAudioFeatureExtractor",
                          "AutoImageProcessor": "processing_phi4mm.Phi4MMImageProcessor", **_PROCESSOR_AUTO_MAP}


def _weight_entry(entry: Path) -> bool:
    """Entries a phi4mm export writes itself: weights, their index, config.json, PEFT folders."""
    name = entry.name
    if entry.is_dir():
        return name.endswith("-lora")
    return name.endswith((".safetensors", ".bin", ".pt", ".pth")) or name in (INDEX, "pytorch_model.bin.index.json",
                                                                             "config.json")


def carried_entries(base: Path) -> list[Path]:
    """The entries of ``base`` an export copies unchanged: everything but the weights, config.json and
    the PEFT folders (molora's staging leftovers and dot-files of tools other than git's too)."""
    from .staging import is_leftover

    return sorted(e for e in base.iterdir()
                  if not _weight_entry(e) and not is_leftover(e) and e.name not in (".git", ".cache"))


def check_base(base, destination=None) -> Path:
    """``base`` as a folder holding an official-layout config.json, apart from ``destination`` (the
    folder written: not inside the base, which would copy it into itself, nor holding it); a
    CheckpointError names the folder and the reason otherwise."""
    path = Path(base).expanduser()
    if destination is not None:
        b, d = path.resolve(), Path(destination).expanduser().resolve()
        if b in d.parents or d in b.parents:
            raise CheckpointError(f"the base folder and the destination {destination} must not hold one another",
                                  str(path))
    if not path.is_dir():
        raise CheckpointError("--base must be the folder of an official Phi-4-multimodal checkpoint (no such "
                              "directory)", str(path))
    config = path / "config.json"
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except FileNotFoundError:
        raise CheckpointError("the base folder has no config.json (expected the official Phi-4-multimodal "
                              "folder)", str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"not a JSON object ({type(e).__name__})", str(config)) from None
    if model_type != "phi4mm":
        raise CheckpointError(f"model_type is {model_type!r}; the base of a phi4mm export is an official "
                              "(model_type phi4mm) folder", str(config))
    return path


def official_base(directory: Path) -> Path | None:
    """``directory`` when it is an official-layout folder with files of its own to carry over
    (remote code, tokenizer, generation config ...), else None."""
    try:
        if json.loads((directory / "config.json").read_text()).get("model_type") != "phi4mm":
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return directory if carried_entries(directory) else None


def official_config(cfg: MoLoRAConfig, base: Path | None = None) -> dict:
    """config.json of a phi4mm export: the official key set with values from ``cfg``; with a ``base``
    folder, its config.json's keys come first and keep their values for `BASE_KEYS` and for keys
    molora does not derive."""
    from .checkpoint_layouts import to_phi4mm_config

    derived = to_phi4mm_config(cfg)
    if base is None:
        return derived
    own = json.loads((base / "config.json").read_text())
    merged = {**own, **derived}
    merged.update({k: own[k] for k in BASE_KEYS if k in own})
    return merged


def generation_config(cfg: MoLoRAConfig, tokenizer=None) -> dict:
    """generation_config.json: generation stops on ``<|end|>`` and the tokenizer's eos (200020 and 199999
    for the real vocabulary); for another vocabulary, on the tokenizer's ``<|end|>`` / eos ids, else on
    the model's ``eos_token_ids``."""
    b = cfg.backbone
    if b.vocab_size > max(OFFICIAL_EOS):
        eos = list(OFFICIAL_EOS)
    elif tokenizer is not None:
        end = tokenizer.convert_tokens_to_ids("<|end|>")
        eos = [i for i in (end, tokenizer.eos_token_id) if isinstance(i, int) and i != tokenizer.unk_token_id]
        eos = list(dict.fromkeys(eos)) or list(b.eos_token_ids)
    else:
        eos = list(b.eos_token_ids)
    return {"_from_model_config": True, "bos_token_id": b.bos_token_id, "eos_token_id": eos,
            "pad_token_id": b.pad_token_id}


def processor_files(cfg: MoLoRAConfig) -> dict[str, dict]:
    """preprocessor_config.json and processor_config.json in the official format (the remote code's
    processor classes), with the settings of ``cfg``."""
    a = cfg.audio
    return {PREPROCESSOR: {"auto_map": dict(_PREPROCESSOR_AUTO_MAP),
                           "feature_extractor_type": "Phi4MMAudioFeatureExtractor",
                           "image_processor_type": "Phi4MMImageProcessor", "processor_class": "Phi4MMProcessor",
                           "audio_compression_rate": a.time_reduction, "audio_downsample_rate": a.downsample_rate,
                           "audio_feat_stride": 1, "dynamic_hd": cfg.vision.dynamic_hd},
            PROCESSOR: {"auto_map": dict(_PROCESSOR_AUTO_MAP), "processor_class": "Phi4MMProcessor"}}


def write_json(directory: Path, files: dict[str, dict]) -> list[str]:
    for name, content in files.items():
        (directory / name).write_text(json.dumps(content, indent=2) + "\n")
    return sorted(files)


def carry_over(base: Path, directory: Path) -> list[str]:
    """Copy every non-weight entry of ``base`` into ``directory`` unchanged (links followed: a hub
    snapshot's files are links into its blob store); returns the names copied."""
    names = []
    for entry in carried_entries(base):
        target = directory / entry.name
        if entry.is_dir():
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(entry, target, symlinks=False)
        else:
            shutil.copyfile(entry, target)
        names.append(entry.name + ("/" if entry.is_dir() else ""))
    return names


def missing(directory: Path) -> list[str]:
    """What a phi4mm folder lacks to load as the official one does (vLLM ``--trust-remote-code``,
    transformers' AutoConfig / AutoProcessor)."""
    code = [f for f in REMOTE_CODE if not (directory / f).exists()]
    out = []
    if code:
        out.append(f"the remote-code modules its auto_map names ({', '.join(code)})")
    tok = [f for f in TOKENIZER_FILES if not (directory / f).exists()]
    if tok:
        out.append(f"the tokenizer files ({', '.join(tok)})")
    return out


def missing_warning(directory: Path, shown=None) -> str | None:
    """One line naming what a phi4mm export without a base lacks, or None (``shown``: the folder's
    name in the message, when ``directory`` is its staging folder)."""
    lacks = missing(directory)
    if not lacks:
        return None
    return (f"{shown or directory} lacks {' and '.join(lacks)}, so vLLM (--trust-remote-code) and transformers' "
            "AutoConfig cannot load it yet: pass the official Phi-4-multimodal-instruct folder as the base "
            "(molora convert ... --layout phi4mm --base DIR, or save_pretrained(dir, layout='phi4mm', base=DIR)) "
            "to copy them, or copy them in by hand")


def owned(carried: list[str]):
    """An ``owned`` predicate for `molora.staging.staged`: a new phi4mm export replaces the official
    files molora writes and the entries it copies from the base again."""
    names = {n.rstrip("/") for n in carried} | {GENERATION, PREPROCESSOR, PROCESSOR}
    return lambda entry: entry.name in names
