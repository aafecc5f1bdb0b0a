"""aipc: run chat models locally on AI PCs through pluggable accelerator backends.

    import aipc
    model = aipc.load("smollm2-135m-instruct")          # best backend present, its default precision
    for text in model.generate("What is the capital of France?"):
        print(text, end="", flush=True)
    print(model.usage)

Heavy runtimes are imported only when a model is loaded.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402

_LAZY = {
    "load": "runtime", "quantize": "runtime", "Model": "runtime", "LoadedModel": "types",
    "QuantizeRequest": "types", "LoadRequest": "types",
    "GenerationConfig": "types", "Capabilities": "types", "BackendInfo": "types", "Device": "types",
    "Chunk": "types", "Manifest": "types", "Usage": "types", "PRECISIONS": "types",
    "registry": "plugins", "Constraint": "constraints",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'aipc' has no attribute {name!r}")


__all__ = ["__version__", "hookimpl", *_LAZY]
