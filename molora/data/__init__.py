"""The data both the trainers (``molora.stages``) and the evaluators (``molora.eval``) read: JSONL
manifests (``manifest.py``) and ``datasets`` sources (``hf_datasets.py``), as ``Sample`` rows."""
from .manifest import ManifestError, Sample, read_manifest

__all__ = ["ManifestError", "Sample", "read_manifest"]
