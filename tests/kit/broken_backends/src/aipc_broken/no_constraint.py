"""Claims every constraint kind but generates unconstrained text."""

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-constraint")


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config.with_(constraint=None))
