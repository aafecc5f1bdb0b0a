"""aipc-openvino: the OpenVINO backend of aipc (``aipc run --backend openvino``).

Quantizes with optimum-intel + NNCF and generates with openvino-genai's LLMPipeline. The hooks
live in :mod:`aipc_openvino.plugin`; importing this package imports no runtime.
"""

__version__ = "0.2.0"  # 0.2: new int4 defaults for small models (group 64, ratio 0.8)
