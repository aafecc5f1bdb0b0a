"""aipc backend ``directml``: ONNX Runtime GenAI (DirectML on Windows, CPU elsewhere).

The hooks are in :mod:`aipc_directml.plugin`; importing this package imports no runtime.
"""

__version__ = "0.2.0"  # 0.2: AutoRound int4 (the CPU default for small models)
