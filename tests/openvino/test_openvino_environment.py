"""The environment this backend is installed into: no CUDA torchvision, optimum-intel imports."""

from __future__ import annotations

import importlib.util


def test_torchvision_is_absent():
    assert importlib.util.find_spec("torchvision") is None, (
        "torchvision is installed: PyPI's build is CUDA-linked and breaks optimum-intel beside the CPU torch; "
        "pip uninstall -y torchvision"
    )


def test_optimum_intel_imports(python_run):
    done = python_run("from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig\n"
                      "import torch; print(torch.__version__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "+cpu" in done.stdout or "cpu" in done.stdout.lower() or done.stdout.strip(), done.stdout
