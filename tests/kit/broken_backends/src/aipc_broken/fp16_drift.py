"""At fp16 its weights drift from the source (noise), as a bad conversion would."""

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_quantize, aipc_tokenize  # noqa: F401  (hooks reused)

from . import generate, info


@hookimpl
def aipc_backend_info():
    return info("broken-fp16")


@hookimpl
def aipc_load(request):
    import torch

    loaded = reference.aipc_load(request)
    if request.manifest.precision == "fp16":
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for weight in loaded.runtime[0].parameters():
                noise = torch.randn(weight.shape, generator=generator).to(weight.dtype)
                weight.add_(noise * weight.float().std().to(weight.dtype) * 0.5)
    return loaded


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config)
