"""Generates three tokens more than max_new_tokens."""

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-max-tokens")


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config.with_(max_new_tokens=config.max_new_tokens + 3))
