"""The hooks a backend plugin implements.

A backend is a module (or object) registered under the ``aipc`` entry-point group, e.g.
``[project.entry-points.aipc] openvino = "aipc_openvino.plugin"``. It implements the hooks
below with ``@aipc.hookimpl``. The core calls ``aipc_backend_info`` on every backend and
``aipc_detect_artifact`` / ``aipc_register_commands`` on all of them; every other hook is called
on the one backend the user chose, so a backend never sees another backend's calls.

A backend must import its heavy runtime lazily, inside quantize / load / generate: the core
imports every plugin module to list backends, and that must stay fast.

Bad input is reported by raising the errors in :mod:`aipc.errors`, never a bare Exception.

The data the hooks take and return is in :mod:`aipc.types` (``LoadRequest``, ``QuantizeRequest``,
``LoadedModel``... also importable from :mod:`aipc.runtime`, their former home). What a backend can
leave to the core:

- ``-o`` option names: declared in ``BackendInfo.options`` (and ``option_pattern``), checked by the
  core before any hook is called (:mod:`aipc.options`);
- the tokenizer and chat-template files: the core copies :data:`aipc.artifacts.SIDE_FILES` from the
  source into every artifact after ``aipc_quantize``, and refuses chat messages for a model without
  a chat template rather than guessing a format;
- EOS ids, the context length and one-line load errors: :mod:`aipc.artifacts`;
- which backend is the default: ``BackendInfo.priority`` (see :class:`aipc.types.BackendInfo`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import pluggy

if TYPE_CHECKING:
    import click

    from .types import BackendInfo, Chunk, GenerationConfig, LoadedModel, LoadRequest, Manifest, QuantizeRequest

hookspec = pluggy.HookspecMarker("aipc")
hookimpl = pluggy.HookimplMarker("aipc")


@hookspec(firstresult=True)
def aipc_backend_info() -> BackendInfo:
    """Describe this backend.

    Called whenever the core lists or selects backends (``aipc backends``, every ``run``), so it
    must be cheap: no runtime import, no model load. Device presence may be probed with cheap
    checks (a library lookup, a device node) and must give the reason when a device is absent.

    :returns: a :class:`aipc.types.BackendInfo` whose ``name`` equals the entry-point name.
    """


@hookspec(firstresult=True)
def aipc_quantize(request: QuantizeRequest) -> Manifest:
    """Convert a Hugging Face model folder into this backend's artifact.

    Called by ``aipc quantize`` and by ``aipc run`` when the cache holds no artifact for the
    (source, backend, precision, device, options) key.

    :param request: ``source_dir`` (a Hugging Face folder: config, weights, tokenizer),
        ``output_dir`` (an empty temporary folder; the core renames it into place only after
        this hook returns, so an interrupted quantize never leaves a usable-looking artifact),
        ``precision``, ``device``, ``options`` (the user's ``-o KEY=VALUE``, strings),
        ``cache_dir`` (this backend's own cache folder) and ``progress(message, fraction)``.
    :returns: the :class:`aipc.types.Manifest` describing what was written, built with
        ``request.manifest(options=..., versions=...)``. The core writes it as ``aipc.json``.
    :raises UnsupportedPrecisionError: the precision is not offered for that device.
    :raises UnsupportedDeviceError: the device is unknown to the backend.
    :raises InvalidConfigError: an option has a bad value (a name the backend does not declare in
        ``BackendInfo.options`` is refused by the core before this hook is called).
    :raises UnsupportedArchitectureError: the backend cannot convert this model's architecture.
    """


@hookspec(firstresult=True)
def aipc_load(request: LoadRequest) -> LoadedModel:
    """Load an artifact folder for generation.

    Called once per :func:`aipc.load`; the result is passed back to ``aipc_generate`` and
    ``aipc_tokenize``.

    :param request: ``artifact_dir``, its ``manifest`` (for artifacts this backend made; for a
        foreign folder it recognised in ``aipc_detect_artifact``, a manifest the core inferred),
        ``device``, ``options``, ``cache_dir`` (e.g. for a compiled-model cache) and
        ``cache_slots``: how many prompt states to keep for prefix reuse, if the backend's
        capabilities claim ``prefix_cache`` (0 means keep none; others ignore it).
    :returns: a :class:`aipc.types.LoadedModel` holding the runtime object in ``runtime`` and
        the model's context length in tokens, if known (:func:`aipc.artifacts.context_length`).
    :raises InvalidModelError: the folder is missing files or they are corrupt.
    :raises BackendUnavailableError: the device's runtime or hardware is absent.
    """


@hookspec(firstresult=True)
def aipc_generate(model: LoadedModel, prompt: str, config: GenerationConfig) -> Iterator[Chunk]:
    """Generate a continuation of ``prompt``, streaming.

    Called for every generation on a model this backend loaded. ``prompt`` is final text: the
    core has applied the chat template already, so the backend must not template it again.
    ``config`` is validated; ``config.max_new_tokens`` counts generated tokens only.

    :returns: an iterator of :class:`aipc.types.Chunk` (text, the number of tokens it covers
        and their ids where the runtime exposes them), in order, ending at EOS or after
        ``max_new_tokens`` tokens. With ``config.ignore_eos`` EOS must be made impossible (mask the
        EOS ids' logits, as transformers' ``min_new_tokens`` does), not generated and skipped: the
        stream then has exactly ``max_new_tokens`` tokens, the reference's. A ``config.constraint``
        overrides it: constrained text ends where its grammar does. If the capabilities claim ``native_stop_strings`` it must
        also end soon after a stop string appears. The core may close the iterator early
        (stop string, Ctrl-C): the backend must then stop its runtime's work.

    A backend claiming ``prefix_cache`` may continue the KV state of an earlier prompt that
    shares leading tokens with this one (cut back to exactly the shared tokens, see
    :mod:`aipc.prefix`) and prefill only the rest; the greedy tokens must be those of a cold run.
    It sets ``model.cached_tokens`` to the number of prompt tokens reused (0 for a cold run) on
    every call, before its first chunk. State left by a stream closed early must stay usable.
    :raises InvalidConfigError: a setting the backend cannot honour (e.g. beam search on NPU).
    :raises PromptTooLongError: the prompt exceeds the model's or the device's limit.
    """


@hookspec(firstresult=True)
def aipc_tokenize(model: LoadedModel, text: str) -> list[int]:
    """Return the token ids the model's own tokenizer gives ``text`` (no special tokens added).

    Called by the core to count prompt tokens, check the context limit and build benchmark
    prompts of an exact length.
    """


@hookspec
def aipc_detect_artifact(folder: Path) -> str | None:
    """Recognise a model folder made outside aipc (e.g. by ``optimum-cli export openvino``).

    Called on every backend when the user names a folder that has no ``aipc.json`` and is not
    a plain Hugging Face model.

    :returns: the precision the folder holds (``"int4"``...) if this backend can load it as an
        artifact, else None.
    """


@hookspec
def aipc_register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``aipc`` command line. Called once when the CLI starts."""

