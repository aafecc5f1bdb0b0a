"""Claims sampling but always decodes greedily."""

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-greedy")


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config.with_(temperature=0.0, do_sample=False))
