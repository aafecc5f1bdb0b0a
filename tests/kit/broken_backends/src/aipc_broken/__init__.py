"""Each module is the reference backend with one defect."""

from dataclasses import replace

from aipc.backends import reference


def info(name: str, **capabilities):
    base = reference.aipc_backend_info()
    return replace(base, name=name, priority=-100, description="deliberately broken (aipc's own tests)",
                   capabilities=replace(base.capabilities, **capabilities))
