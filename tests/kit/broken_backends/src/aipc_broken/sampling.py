"""Claims sampling and repetition_penalty, but drops top_k and repetition_penalty (sampling from
the whole distribution, never penalising)."""

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-sampling")


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config.with_(top_k=0, repetition_penalty=1.0))
