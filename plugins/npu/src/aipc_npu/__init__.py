"""aipc-npu: the Intel NPU backend of aipc.

Two engines behind one backend named ``npu``:

- ``openvino`` (default): OpenVINO GenAI's ``LLMPipeline`` on the ``NPU`` device, on an IR exported
  with OpenVINO's NPU settings (:mod:`aipc_openvino_common.export`, :mod:`aipc_npu.genai_engine`).
- ``library`` (extra ``aipc-npu[library]``, ``-o engine=library``): the Intel NPU Acceleration
  Library, the walkthrough's own path (:mod:`aipc_npu.library_engine`).
"""

__version__ = "0.1.0"
