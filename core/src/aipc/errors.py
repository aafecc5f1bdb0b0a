"""The errors aipc raises, and that backends must raise, on bad input.

Every error carries a one-line message written for the user; the CLI prints it on stderr and
exits non-zero. Backends raise these (never a bare Exception) for the cases their hookspecs name.
"""

from __future__ import annotations


class AipcError(Exception):
    """Base class: a problem the user can act on. ``str(error)`` is one line."""

    exit_code = 1


class UnknownBackendError(AipcError):
    """No installed backend has that name."""


class BackendUnavailableError(AipcError):
    """The backend is installed but cannot run here (its hardware or runtime is absent)."""


class UnsupportedPrecisionError(AipcError):
    """The backend cannot produce or run the requested precision (on that device)."""


class UnsupportedDeviceError(AipcError):
    """The backend does not know the requested device, or the device is absent."""


class ModelNotFoundError(AipcError):
    """The model name, path or hub id does not lead to a model."""


class InvalidModelError(AipcError):
    """The folder or file is not a model, or it is corrupt or truncated."""


class UnsupportedArchitectureError(InvalidModelError):
    """The backend cannot convert or run this model's architecture (``model_type``), e.g. its
    exporter has no recipe for it. A kind of InvalidModelError, so ``except InvalidModelError``
    still catches it; the message names the architecture and, where known, what the backend takes."""


class HubUnavailableError(AipcError):
    """The model must come from the Hugging Face hub and the hub cannot be reached."""


class InvalidConfigError(AipcError, ValueError):
    """A generation setting or backend option has an invalid value."""


class PromptTooLongError(AipcError):
    """The prompt does not fit in the model's context (or the device's prompt limit)."""


class CacheError(AipcError):
    """The cache directory is not writable or the disk is full."""


class BackendError(AipcError):
    """A backend failed or broke its contract (e.g. wrote no manifest)."""


class GenerationCancelled(AipcError):
    """Generation was stopped by the user (Ctrl-C)."""

    exit_code = 130
