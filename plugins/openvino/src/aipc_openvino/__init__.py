"""aipc-openvino: the OpenVINO backend of aipc (``aipc run --backend openvino``).

Quantizes with optimum-intel + NNCF and generates with openvino-genai's LLMPipeline. The hooks
live in :mod:`aipc_openvino.plugin`; importing this package imports no runtime.
"""

__version__ = "0.3.0"  # 0.2: int4 group 64 for small models; 0.3: their ratio 0.6 (was 0.8)
