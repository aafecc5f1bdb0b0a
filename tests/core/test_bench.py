"""`aipc bench`: exact prompt lengths, forced output lengths, interleaved runs, JSON and chart."""

import json

import aipc
from aipc.bench import exact_prompt, variant_options


def test_exact_prompt_has_exactly_the_requested_tokens(tiny_phi3, smollm2):
    for folder in (tiny_phi3, smollm2):
        model = aipc.load(str(folder), backend="transformers")
        for tokens in (1, 16, 77, 128):
            assert len(model.tokenize(exact_prompt(model, tokens))) == tokens


def test_bench_writes_json_table_and_chart(aipc_cli, tiny_phi3, tmp_path):
    report, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    result = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "-p", "fp32", "-p", "fp16", "-p", "int4",
                      "--prompt-tokens", "16", "--new-tokens", "8", "--runs", "2", "--json", str(report),
                      "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    assert "skipped transformers/int4" in result.stderr
    data = json.loads(report.read_text())
    assert [(r["precision"], r["runs"]) for r in data["results"]] == [("fp32", 2), ("fp16", 2)]
    for r in data["results"]:
        assert r["decode_tps"] > 0 and r["ttft_ms"] > 0 and r["prefill_tps"] > 0 and r["artifact_mb"] > 0
        assert len(r["token_latencies_ms"]) == 7 and r["load_warm_s"] > 0 and r["peak_rss_mb"] > 0
    assert data["settings"]["interleaved"] and data["machine"]["cores"]
    assert "TTFT ms" in result.stdout and "transformers/fp16/CPU" in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 20000


def test_variants_are_measured_side_by_side_in_rotating_order(tiny_phi3):
    from aipc import bench

    combos, notes = bench.combinations(("transformers",), ("fp32",), None, ("", "threads=1"))
    assert not notes and [c.options for c in combos] == [(), ("threads=1",)]
    assert [c.label for c in combos] == ["transformers/fp32/CPU", "transformers/fp32/CPU [threads=1]"]
    messages = []
    report = bench.run(str(tiny_phi3), combos, prompt_tokens=8, new_tokens=4, runs=3, warmup=0,
                       progress=lambda message, fraction=None: messages.append(message))
    assert [r["options"] for r in report["results"]] == [[], ["threads=1"]]
    assert all(r["runs"] == 3 and r["decode_tps"] > 0 for r in report["results"])
    runs = [m.split(": ", 1)[1] for m in messages if m.startswith("Run ")]
    a, b = (c.label for c in combos)
    assert runs == [a, b, b, a, a, b]  # each round starts one combination later


def test_bench_cli_variants_are_labelled_in_the_table(aipc_cli, tiny_phi3):
    result = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "-p", "fp32", "--variant", "", "--variant",
                      "threads=1", "--runs", "1", "--warmup", "0", "--prompt-tokens", "8", "--new-tokens", "2")
    assert result.returncode == 0, result.stderr
    assert "transformers/fp32/CPU [threads=1]" in result.stdout, result.stdout
    bad = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "--variant", "nosuchoption=1", "--runs", "1")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("Error:"), bad.stderr


def test_bench_conversation_reports_reuse_per_turn_on_and_off(aipc_cli, tiny_phi3, tmp_path):
    report, chart = tmp_path / "turns.json", tmp_path / "turns.png"
    result = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "-p", "fp32", "--turns", "3", "--runs", "1",
                      "--warmup", "0", "--prompt-tokens", "8", "--new-tokens", "4", "--json", str(report),
                      "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["settings"]["turns"] == 3
    on, off = data["results"]  # --turns without --cache-slots: reuse on (1 slot) and off (0), side by side
    assert (on["cache_slots"], off["cache_slots"]) == (1, 0) and off["label"].endswith("[cache_slots=0]")
    assert [t["turn"] for t in on["turns"]] == [1, 2, 3]
    assert on["turns"][0]["cached_tokens"] == 0
    for before, turn in zip(on["turns"], on["turns"][1:]):  # each turn reuses the history sent before
        assert before["prompt_tokens"] - 2 <= turn["cached_tokens"] < turn["prompt_tokens"], on["turns"]
    assert all(t["cached_tokens"] == 0 for t in off["turns"])
    # the same greedy answers either way, so the same conversation
    assert [t["prompt_tokens"] for t in on["turns"]] == [t["prompt_tokens"] for t in off["turns"]]
    assert all(t["ttft_ms"] > 0 and t["decode_tps"] > 0 for r in (on, off) for t in r["turns"])
    assert "cached tokens" in result.stdout and "cache_slots=0" in result.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "--turns", "2", "--cache-slots", "-1")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("Error: cache slots"), bad.stderr


def test_bench_measures_a_schema_beside_unconstrained(aipc_cli, tiny_phi3, tmp_path):
    report = tmp_path / "schema.json"
    schema = '{"type": "object", "properties": {"a": {"type": "string", "maxLength": 8}}, "required": ["a"]}'
    result = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "-p", "fp32", "--schema", schema, "--runs", "1",
                      "--warmup", "0", "--prompt-tokens", "8", "--new-tokens", "16", "--json", str(report))
    assert result.returncode == 0, result.stderr
    free, constrained = json.loads(report.read_text())["results"]
    assert "json_schema" in constrained["label"] and "json_schema" not in free["label"]
    assert constrained["decode_tps"] > 0 and free["decode_tps"] > 0
    bad = aipc_cli("bench", str(tiny_phi3), "-b", "transformers", "--schema", '{"type": 7}', "--runs", "1")
    assert bad.returncode == 1 and "not valid" in bad.stderr.strip().splitlines()[-1], bad.stderr


def test_each_combinations_memory_is_measured_without_the_others_loaded(tiny_phi3, monkeypatch):
    """Peak memory of one combination must not count models of the combinations before it."""
    from aipc import bench

    loaded, seen = [], []
    real_load, real_memory = bench._load, bench._memory

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded.append(model)
        return model

    def memory():
        seen.append(sum(m.loaded.runtime is not None for m in loaded))
        return real_memory()

    monkeypatch.setattr(bench, "_load", load)
    monkeypatch.setattr(bench, "_memory", memory)
    combos, _ = bench.combinations(("transformers",), ("fp32", "fp16"), None)
    report = bench.run(str(tiny_phi3), combos, prompt_tokens=8, new_tokens=2, runs=1, warmup=0)
    assert seen == [0, 1, 0, 1], seen  # before and after each combination's loads: only its own model
    assert all(r["runs"] == 1 and r["peak_rss_mb"] > 0 for r in report["results"])


def test_a_variant_option_value_may_hold_commas():
    assert variant_options("") == ()
    assert variant_options("a=1, b=2") == ("a=1", "b=2")
    assert variant_options("algo_config=k_quant,matmul_mixed_precision=last_matmul:int8,mixed_layers:int8") == (
        "algo_config=k_quant", "matmul_mixed_precision=last_matmul:int8,mixed_layers:int8")
    assert variant_options("novalue") == ("novalue",)  # refused later by parse_options, in one line
