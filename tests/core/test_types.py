import json

import pytest

from aipc.errors import InvalidConfigError, InvalidModelError
from aipc.types import GenerationConfig, Manifest, check_precision


@pytest.mark.parametrize("bad, words", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": -5}, "max_new_tokens"),
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"),
    ({"top_k": -1}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"), ({"seed": -1}, "seed"),
    ({"stop": ("",)}, "stop"),
])
def test_generation_config_rejects_bad_values(bad, words):
    with pytest.raises(InvalidConfigError, match=words):
        GenerationConfig(**bad)


def test_generation_config_defaults_are_greedy_and_sampling_follows_temperature():
    assert not GenerationConfig().sampling
    assert GenerationConfig(temperature=0.7).sampling
    assert GenerationConfig(do_sample=True).temperature == 1.0
    assert GenerationConfig(stop="x").stop == ("x",)
    with pytest.raises(InvalidConfigError, match="unknown generation setting"):
        GenerationConfig.from_options(max_tokens=3)


@pytest.mark.parametrize("given, want", [("fp32", "fp32"), ("FP16", "fp16"), ("float16", "fp16"), (" int4 ", "int4")])
def test_precision_names(given, want):
    assert check_precision(given) == want


def test_unknown_precision_names_the_valid_ones():
    with pytest.raises(InvalidConfigError, match="fp32, fp16, int8, int4"):
        check_precision("int3")


def test_manifest_round_trip_and_corruption(tmp_path):
    manifest = Manifest(backend="x", precision="int4", device="CPU", source={"name": "m", "fingerprint": "f"},
                        options={"group_size": 64}, versions={"aipc": "0"})
    manifest.write(tmp_path)
    assert Manifest.read(tmp_path) == manifest
    assert json.loads((tmp_path / "aipc.json").read_text())["format"] == 1
    (tmp_path / "aipc.json").write_text('{"backend": "x"}')
    with pytest.raises(InvalidModelError, match="corrupt"):
        Manifest.read(tmp_path)
    (tmp_path / "aipc.json").write_text('{"backend": "x", "precision": "int9", "device": "", "source": {}}')
    with pytest.raises(InvalidModelError, match="corrupt"):
        Manifest.read(tmp_path)
    (tmp_path / "aipc.json").unlink()
    with pytest.raises(InvalidModelError, match="no aipc.json"):
        Manifest.read(tmp_path)


def test_decode_rate_comes_from_inter_token_times_not_the_stream_teardown():
    from aipc.types import Usage

    # 4 tokens arriving 0.1 s apart, then a slow close of the stream (total 5 s)
    usage = Usage(generated_tokens=4, time_to_first_token_s=0.2, total_s=5.0, token_times_s=[0.2, 0.3, 0.4, 0.5])
    assert abs(usage.decode_tokens_per_s - 10.0) < 1e-9
    # one chunk carrying every token: no inter-token time, the whole stream is the measure
    usage = Usage(generated_tokens=4, time_to_first_token_s=0.2, total_s=0.5, token_times_s=[0.2] * 4)
    assert abs(usage.decode_tokens_per_s - 10.0) < 1e-9
    assert Usage(generated_tokens=1, token_times_s=[0.2], total_s=0.3).decode_tokens_per_s == 0.0


def test_backend_option_values_parse_or_fail_with_the_option_named():
    from aipc.types import option_bool, option_int

    assert [option_bool("sym", v) for v in ("1", "True", " yes", "on", "0", "false", "No", "off")] == [True] * 4 + [False] * 4
    assert option_int("group_size", " 64 ") == 64 and option_int("n", "5", minimum=1) == 5
    with pytest.raises(InvalidConfigError, match="sym must be true or false"):
        option_bool("sym", "maybe")
    with pytest.raises(InvalidConfigError, match="group_size must be a whole number"):
        option_int("group_size", "6.5")
    with pytest.raises(InvalidConfigError, match="MAX_PROMPT_LEN must be >= 1"):
        option_int("MAX_PROMPT_LEN", "0", minimum=1)
