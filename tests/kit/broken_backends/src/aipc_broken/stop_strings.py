"""Claims native stop strings but drops them."""

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-stop", native_stop_strings=True)


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config.with_(stop=()))
