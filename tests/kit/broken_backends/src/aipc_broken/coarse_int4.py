"""Its int4 rounds every weight matrix to a few levels per output channel, no groups, no data: the
model still loads and talks fluently, but states wrong facts (a recipe that loses the answers)."""

from dataclasses import replace

from aipc import hookimpl
from aipc.backends import reference
from aipc.backends.reference import aipc_tokenize  # noqa: F401  (hook reused)
from aipc.types import Device

from . import generate, info

LEVELS = 1  # per side of zero (ternary weights): far coarser than int4's 7, so that the damage is certain


@hookimpl
def aipc_backend_info():
    return replace(info("broken-int4"), devices=(Device("CPU", ("fp32", "int4")),))


@hookimpl
def aipc_quantize(request):
    manifest = reference.aipc_quantize(replace(request, precision="fp32"))
    return replace(manifest, precision=request.precision)


@hookimpl
def aipc_load(request):
    import torch

    loaded = reference.aipc_load(replace(request, manifest=replace(request.manifest, precision="fp32")))
    if request.manifest.precision == "int4":
        with torch.no_grad():
            for weight in loaded.runtime[0].parameters():
                if weight.dim() == 2:
                    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / LEVELS
                    weight.copy_((weight / scale).round().clamp(-LEVELS, LEVELS) * scale)
    return loaded


@hookimpl
def aipc_generate(model, prompt, config):
    return generate(model, prompt, config)
