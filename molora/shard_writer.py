"""Writing a state dict shard by shard: the shards are planned from shapes and dtypes alone (huggingface_hub's
split, as ``save_torch_state_dict`` plans them), then each shard's tensors are read, written with safetensors'
``save_file`` and let go before the next shard is read. The values may be tensors or ``StoredTensor``s
(read from their files only when their shard is written), so a checkpoint of any size is rewritten with
about one shard in memory. The files are byte for byte those ``save_torch_state_dict`` writes for the same
tensors: same names (``model.safetensors`` or ``model-0000i-of-0000n.safetensors``), same headers, same
index.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file

from .stored_tensors import read, total_bytes
from .weight_files import INDEX, WEIGHTS

FILE_PATTERN = "model{suffix}.safetensors"
FORMAT = {"format": "pt"}


def nbytes(t) -> int:
    """Bytes a tensor takes in a safetensors file (molora's state dicts share no storage between keys)."""
    return t.numel() * t.dtype.itemsize


def plan_shards(tensors: Mapping, max_shard_size: int | str = "5GB"):
    """huggingface_hub's ``StateDictSplit`` of ``tensors``, from their sizes only."""
    from huggingface_hub import split_state_dict_into_shards_factory

    return split_state_dict_into_shards_factory(dict(tensors), get_storage_size=nbytes, filename_pattern=FILE_PATTERN,
                                                max_shard_size=max_shard_size)


def write_shards(tensors: Mapping, directory: Path, max_shard_size: int | str = "5GB", progress=None) -> list[str]:
    """``model.safetensors``, or shards + ``model.safetensors.index.json`` above ``max_shard_size``, one shard
    in memory at a time; returns the file names written. ``progress``: a ``Progress`` (bytes) or None."""
    split = plan_shards(tensors, max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        write_file({k: tensors[k] for k in keys}, Path(directory) / filename, progress)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        with open(os.path.join(directory, INDEX), "w") as f:
            json.dump(index, f, indent=2)
    return sorted(split.filename_to_tensors) + ([INDEX] if split.is_sharded else [])


def write_file(tensors: Mapping, path: Path, progress=None) -> None:
    """One safetensors file of ``tensors`` (read now, released on return)."""
    shard = read(tensors)
    save_file(shard, str(path), metadata=dict(FORMAT))
    if progress is not None:
        progress.update(total_bytes(shard.values()))


class Progress:
    """A bytes progress bar (tqdm, as the rest of the CLI) over everything a save writes; ``enabled``:
    True, False, or None for tqdm's own choice (shown on a terminal)."""

    def __init__(self, total: int, desc: str, enabled: bool | None = True):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
                        disable=None if enabled is None else not enabled)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


__all__ = ["WEIGHTS", "INDEX", "plan_shards", "write_shards", "write_file", "Progress"]
