"""Raises a bare Exception for a precision it lacks instead of UnsupportedPrecisionError."""

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_load, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-errors")


@hookimpl
def aipc_quantize(request):
    if request.precision not in reference.PRECISIONS:
        raise Exception("bad precision")
    return reference.aipc_quantize(request)


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config)
