"""What aipc's OpenVINO-based backends (aipc-openvino, aipc-npu) share: :mod:`.export` (Hugging
Face folder -> OpenVINO IR) and :mod:`.genai` (OpenVINO GenAI generation config and streaming).
Importing this package imports no runtime."""

__version__ = "0.1.0"
