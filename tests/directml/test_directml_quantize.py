"""Building models with onnxruntime-genai's model builder through aipc: precisions per device,
options, manifests, and the errors for what a device lacks."""

from __future__ import annotations

import json

import pytest

import aipc
from aipc.errors import InvalidConfigError, UnsupportedPrecisionError
from aipc.plugins import registry
from aipc.runtime import QuantizeRequest
from aipc.types import Manifest

from directml_support import BACKEND


@pytest.mark.parametrize(("precision", "device", "target"), [
    ("fp32", "CPU", "cpu"), ("int8", "CPU", "cpu"), ("int4", "CPU", "cpu"), ("fp16", "AUTO", "dml"),
])
def test_build_writes_a_genai_model_and_manifest(artifacts, precision, device, target):
    from aipc_directml.artifact import built_for, precision_of, read_config

    folder = artifacts(precision, device)
    manifest = Manifest.read(folder)
    assert (manifest.backend, manifest.precision, manifest.device) == (BACKEND, precision, device)
    assert manifest.options["target"] == target
    assert manifest.versions.get("onnxruntime-genai") and manifest.versions.get("aipc-directml")
    for name in ("genai_config.json", "model.onnx", "tokenizer.json", "build.log"):
        assert (folder / name).is_file(), name
    assert built_for(read_config(folder)) == target
    assert precision_of(folder) == precision  # what aipc_detect_artifact would say of it


def _request(tiny, tmp_path, precision, device, **options):
    return QuantizeRequest(backend=BACKEND, source_dir=tiny, output_dir=tmp_path, precision=precision, device=device,
                           options=options, source={"name": "tiny"}, cache_dir=tmp_path)


@pytest.mark.parametrize(("precision", "device"), [("fp16", "CPU"), ("fp32", "DML"), ("int8", "DML"),
                                                   ("fp32", "AUTO"), ("int8", "AUTO")])
def test_precisions_a_device_lacks_are_refused(tiny, tmp_path, precision, device):
    with pytest.raises(UnsupportedPrecisionError, match=precision):
        registry().call(BACKEND, "aipc_quantize", request=_request(tiny, tmp_path, precision, device))
    assert not (tmp_path / "genai_config.json").exists()


def test_the_core_refuses_them_too(tiny):
    with pytest.raises(UnsupportedPrecisionError, match="fp16 on CPU"):
        aipc.quantize(str(tiny), backend=BACKEND, precision="fp16", device="CPU")


@pytest.mark.parametrize(("options", "match"), [
    ({"block_size": "48"}, "block_size"),
    ({"accuracy_level": "9"}, "accuracy_level"),
    ({"algo_config": "gptq"}, "algo_config"),
    ({"matmul_mixed_precision": "lm_head:int8"}, "matmul_mixed_precision"),
    ({"matmul_mixed_precision": "last_matmul:int2"}, "matmul_mixed_precision"),
    ({"no_such_option": "1"}, "no option"),
    ({"algo_config": "autoround", "matmul_mixed_precision": "mixed_layers:int8"}, "does not combine"),
    ({"iters": "-1"}, "iters"),
    ({"num_samples": "0"}, "num_samples"),
    ({"iters": "5", "algo_config": "rtn"}, "applies with algo_config=autoround only"),
    ({"dataset": "wikitext2"}, "no file"),
])
def test_bad_options_are_refused(tiny, tmp_path, options, match):
    with pytest.raises(InvalidConfigError, match=match):
        registry().call(BACKEND, "aipc_quantize", request=_request(tiny, tmp_path, "int4", "CPU", **options))


def test_quantization_options_need_a_quantized_precision(tiny, tmp_path):
    with pytest.raises(InvalidConfigError, match="int4/int8 only"):
        registry().call(BACKEND, "aipc_quantize", request=_request(tiny, tmp_path, "fp32", "CPU", block_size="64"))
    with pytest.raises(InvalidConfigError, match="int8 symmetric only"):
        registry().call(BACKEND, "aipc_quantize", request=_request(tiny, tmp_path, "int8", "CPU", algo_config="autoround",
                                                                   is_symmetric="false"))


def _graph(folder):
    import onnx

    return onnx.load(str(folder / "model.onnx"), load_external_data=False).graph


@pytest.mark.parametrize("options", [{"matmul_mixed_precision": "last_matmul:int8"},
                                     {"is_symmetric": "false", "algo_config": "default"}])
def test_options_that_cannot_share_a_tied_embedding_untie_it(tiny, tmp_path, options):
    """The builder shares a tied model's quantized LM head with its embedding, and with an int8 LM
    head or asymmetric weights it reads initializers it never wrote: the model does not load. aipc
    gives the embedding its own int4 copy instead, and the model loads and answers."""
    tied = tmp_path / "tied"
    tied.mkdir()
    for file in tiny.iterdir():
        (tied / file.name).write_bytes(file.read_bytes())
    config = json.loads((tied / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (tied / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    out.mkdir()
    manifest = registry().call(BACKEND, "aipc_quantize", request=_request(tied, out, "int4", "CPU", **options))
    assert manifest.options["shared_embeddings"] == "false"
    ops = {n.name: n for n in _graph(out).node}
    assert ops["/model/embed_tokens/Gather_Q4"].op_type == "GatherBlockQuantized"
    if "matmul_mixed_precision" in options:
        assert {a.name: a.i for a in ops["/lm_head/MatMul_Q8"].attribute}["bits"] == 8
    manifest.write(out)
    model = aipc.load(str(out), backend=BACKEND, device="CPU", options={"threads": "1"})
    try:
        assert model.complete("Hello", max_new_tokens=4) is not None
    finally:
        model.close()


def test_int4_options_reach_the_builder(tiny):
    folder = aipc.quantize(str(tiny), backend=BACKEND, precision="int4", device="CPU",
                           options={"block_size": "64", "accuracy_level": "1"})
    manifest = Manifest.read(folder)
    assert manifest.options["block_size"] == "64" and manifest.options["accuracy_level"] == "1"
    import onnx

    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits, "no MatMulNBits node in an int4 model"
    attributes = {a.name: a.i for a in nbits[0].attribute}
    assert attributes["block_size"] == 64 and attributes["accuracy_level"] == 1
    # the options are part of the cache key: a different block size is a different artifact
    assert folder != aipc.quantize(str(tiny), backend=BACKEND, precision="int4", device="CPU")


def test_the_builder_fix_wires_the_lm_head_to_the_final_norm(artifacts, tiny):
    """onnxruntime-genai's builder takes any Linear with vocab_size outputs for the LM head; the
    tiny Phi-3's fused gate_up_proj (2 x 256 = 512 = vocab_size) fooled it into reading the logits
    from layer 0. aipc_directml.build makes it use the model's own output embedding. (If the tiny
    model changes its sizes, this still checks the wiring.)"""
    import onnx

    graph = onnx.load(str(artifacts("fp32", "CPU") / "model.onnx"), load_external_data=False).graph
    head = [n for n in graph.node if n.name == "/lm_head/MatMul"]
    assert len(head) == 1
    assert "final_norm" in head[0].input[0], f"the LM head reads {head[0].input[0]}"


def _hidden(tiny):
    return json.loads((tiny / "config.json").read_text())["hidden_size"]


def test_the_default_recipe_is_recorded_in_the_manifest(artifacts, tiny):
    from aipc_directml.options import defaults

    recipe = defaults("int4", "cpu", _hidden(tiny))
    options = Manifest.read(artifacts("int4")).options
    assert recipe and {k: options.get(k) for k in recipe} == recipe


def _matmuls(folder):
    import onnx

    from aipc_directml.artifact import decoder_file, read_config

    graph = onnx.load(str(decoder_file(folder, read_config(folder))), load_external_data=False).graph
    return [n for n in graph.node if n.op_type == "MatMulNBits"]


def _bits(folder):
    return {next((a.i for a in n.attribute if a.name == "bits"), 4) for n in _matmuls(folder)}


def test_a_small_model_s_cpu_int4_default_is_autoround(artifacts):
    """A model under 1024 hidden (the tiny Phi-3 here, SmolLM2 in the suite) gets AutoRound's int4:
    its checkpoint read by the builder, every MatMul 4-bit, the calibration (the model's own text)
    and the time recorded."""
    folder = artifacts("int4")
    options = Manifest.read(folder).options
    assert options["algo_config"] == "autoround" and options["iters"] == "50"
    assert options["calibration"]["dataset"] == "self" and options["calibration"]["samples"] > 0
    assert options["quantize_seconds"] > 0
    assert "AutoRound:" in (folder / "build.log").read_text(encoding="utf-8", errors="replace")
    assert _bits(folder) == {4}


def test_the_mixed_recipe_builds_int8_for_the_sensitive_matmuls(tiny):
    """The larger models' CPU default (asked for here): 8-bit MatMulNBits beside 4-bit ones, and the
    model still reads as int4 (precision_of takes the narrowest)."""
    from aipc_directml.artifact import precision_of

    folder = aipc.quantize(str(tiny), backend=BACKEND, precision="int4", device="CPU",
                           options={"matmul_mixed_precision": "mixed_layers:int8"})
    assert Manifest.read(folder).options.get("algo_config") is None
    assert _bits(folder) == {4, 8}
    assert precision_of(folder) == "int4"


def test_autoround_takes_a_calibration_file(tiny, tmp_path):
    texts = [f"Sample {i}: " + " ".join(f"word{j} of text {i}." for j in range(30)) for i in range(6)]
    data = tmp_path / "calibration.txt"
    data.write_text("\n\n".join(texts), encoding="utf-8")
    folder = aipc.quantize(str(tiny), backend=BACKEND, precision="int4", device="CPU",
                           options={"algo_config": "autoround", "dataset": str(data), "iters": "2"})
    record = Manifest.read(folder).options["calibration"]
    assert (record["dataset"], record["samples"]) == ("calibration.txt", 6)
    model = aipc.load(str(folder), backend=BACKEND, device="CPU", options={"threads": "1"})
    try:
        assert model.complete("Hello", max_new_tokens=4) is not None
    finally:
        model.close()


def test_autoround_int8_is_symmetric_8_bit_weights_the_builder_reads(tiny):
    """int8 AutoRound (opt-in): the CPU int8 default's asymmetry gives way to the symmetric form AutoRound
    writes at 8 bits; every MatMul 8-bit, and the model answers."""
    from aipc_directml.artifact import precision_of

    folder = aipc.quantize(str(tiny), backend=BACKEND, precision="int8", device="CPU",
                           options={"algo_config": "autoround", "iters": "2"})
    assert Manifest.read(folder).options["is_symmetric"] == "true"
    assert _bits(folder) == {8} and precision_of(folder) == "int8"
    model = aipc.load(str(folder), backend=BACKEND, device="CPU", options={"threads": "1"})
    try:
        assert model.complete("Hello", max_new_tokens=4) is not None
    finally:
        model.close()


def test_calibration_text_too_short_is_a_one_line_error(tiny, tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("hi\n\nyo\n\nok", encoding="utf-8")
    with pytest.raises(InvalidConfigError, match=r"^AutoRound failed: ValueError: the calibration text is too short") as error:
        registry().call(BACKEND, "aipc_quantize", request=_request(tiny, tmp_path, "int4", "CPU", dataset=str(data)))
    assert "\n" not in str(error.value) and "last-build-failure.log" in str(error.value)


def test_the_cpu_int8_default_is_asymmetric(artifacts):
    """Every int8 MatMulNBits has its zero points (the 4th input), the asymmetric default."""
    matmuls = _matmuls(artifacts("int8"))
    assert matmuls and all(len(n.input) > 3 and n.input[3] for n in matmuls), [n.name for n in matmuls][:3]


def test_options_override_the_default_recipe_per_target():
    from aipc_directml.options import DEFAULTS, builder_options

    cpu = builder_options("int4", "CPU", {}, tied_embeddings=False)
    assert cpu == DEFAULTS.get(("int4", "cpu"), {})
    assert builder_options("int4", "AUTO", {}, tied_embeddings=False) == DEFAULTS.get(("int4", "dml"), {})
    plain = builder_options("int4", "CPU", {"matmul_mixed_precision": "none", "accuracy_level": "1"}, tied_embeddings=True)
    assert "matmul_mixed_precision" not in plain and "shared_embeddings" not in plain
    assert plain["accuracy_level"] == "1"
    # by model size: a small model's int4 on cpu is AutoRound, a large one's the mixed recipe
    assert builder_options("int4", "CPU", {}, tied_embeddings=True, hidden_size=576) == {
        "algo_config": "autoround", "iters": "50", "dataset": "self"}
    assert builder_options("int4", "CPU", {}, tied_embeddings=False, hidden_size=3072) == cpu
    assert builder_options("int4", "AUTO", {}, tied_embeddings=False, hidden_size=576) == DEFAULTS.get(("int4", "dml"), {})
    # the user's rounding method or mixed precision replaces AutoRound; asking for AutoRound drops the mix
    assert "algo_config" not in builder_options("int4", "CPU", {"matmul_mixed_precision": "last_matmul:int8"},
                                                tied_embeddings=False, hidden_size=576)
    assert builder_options("int4", "CPU", {"algo_config": "rtn"}, tied_embeddings=False, hidden_size=576)["algo_config"] == "rtn"
    big = builder_options("int4", "CPU", {"algo_config": "autoround"}, tied_embeddings=False, hidden_size=3072)
    assert big["algo_config"] == "autoround" and "matmul_mixed_precision" not in big
