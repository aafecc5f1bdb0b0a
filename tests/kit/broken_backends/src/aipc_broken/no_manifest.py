"""Writes its files but returns no manifest."""

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_load, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-manifest")


@hookimpl
def aipc_quantize(request):
    reference.aipc_quantize(request)
    return None


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config)
