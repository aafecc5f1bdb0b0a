"""Claims no repetition_penalty and a 64-token context, but its generate checks neither: an
unclaimed setting is silently ignored and an over-long prompt runs (the core would refuse both
first; the suite calls generate directly)."""

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import info


@hookimpl
def aipc_backend_info():
    return info("broken-refusals", repetition_penalty=False, max_context=64)


@hookimpl
def aipc_load(request):
    return reference.aipc_load(request)


@hookimpl
def aipc_generate(model, prompt, config):
    return reference.aipc_generate(model, prompt, config.with_(repetition_penalty=1.0))
