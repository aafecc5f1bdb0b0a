"""aipc backend ``directml``: ONNX Runtime GenAI (DirectML on Windows, CPU elsewhere).

The hooks are in :mod:`aipc_directml.plugin`; importing this package imports no runtime.
"""

__version__ = "0.1.0"
