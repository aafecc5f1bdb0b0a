"""Claims streaming, but hands out the chunks only once the whole generation is done."""

from aipc import hookimpl
from aipc.backends.reference import aipc_load, aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-streaming")


@hookimpl
def aipc_generate(model, prompt, config):
    chunks = list(generate(model, prompt, config))
    yield from chunks
