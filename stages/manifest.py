"""Old import path of ``molora.data.manifest`` (the data package the trainers and the evaluators share)."""

from molora.data.manifest import *  # noqa: F401,F403
from molora.data.manifest import __all__  # noqa: F401
