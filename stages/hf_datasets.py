"""Old import path of ``molora.data.hf_datasets`` (the data package the trainers and the evaluators share)."""

from molora.data.hf_datasets import *  # noqa: F401,F403
from molora.data.hf_datasets import __all__  # noqa: F401
