"""The real ACE-Step 1.5 backend (entry point ``acestep``), on the diffusers port of the model.

Importing this package needs only the default install: diffusers and transformers are imported when
a backend is built, and their absence then raises ``BackendLoadError`` with the install line for
the ``prefect-acestep[acestep]`` extra.
"""

from prefect_acestep.stages.backends.acestep.backend import AceStepBackend

__all__ = ["AceStepBackend"]
