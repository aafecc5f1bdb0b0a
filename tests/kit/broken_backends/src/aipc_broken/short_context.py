"""Caps a LongRoPE model (Phi-3-mini-128k, Phi-4-mini) at its original context, as aipc's openvino
and npu backends did: prompts past it are refused and answers crossing it are cut short."""

from aipc import hookimpl
from aipc.artifacts import longrope_original
from aipc.backends import reference
from aipc.backends.reference import aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-longrope")


@hookimpl
def aipc_load(request):
    loaded = reference.aipc_load(request)
    loaded.context_length = longrope_original(request.artifact_dir) or loaded.context_length
    return loaded


@hookimpl
def aipc_generate(model, prompt, config):
    tokens = len(reference.aipc_tokenize(model, prompt))
    return generate(model, prompt, config.with_(max_new_tokens=max(1, min(config.max_new_tokens,
                                                                         model.context_length - tokens))))
