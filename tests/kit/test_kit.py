"""The plugin-author kit: the suite fails each deliberately broken backend on the right test,
and a backend packaged outside this repository is found and certified."""

import json
import subprocess
import sys
import textwrap

import pytest


def certify(backend, tmp_path, *extra, env=None, marks="not real_model"):
    """Run `aipc conformance` as an author would; return {test name: (outcome, reason)} and the report."""
    report = tmp_path / f"{backend}.json"
    result = subprocess.run(
        [sys.executable, "-m", "aipc", "conformance", "--backend", backend, "--json", str(report),
         "-m", marks, *extra], capture_output=True, text=True, env=env, timeout=1800)
    assert report.is_file(), f"no report (exit {result.returncode}): {result.stdout[-2000:]}{result.stderr[-2000:]}"
    data = json.loads(report.read_text())
    outcomes = {t["test"]: (t["outcome"], t["reason"]) for t in data["tests"]}
    return result, outcomes, data


def failed(outcomes):
    return {name.split("[")[0] for name, (outcome, _) in outcomes.items() if outcome == "failed"}


@pytest.mark.parametrize("backend, expected", [
    ("broken-max-tokens", {"test_max_new_tokens_is_exact"}),
    ("broken-stop", {"test_native_stop_strings_stop_the_runtime"}),
    ("broken-errors", {"test_quantize_refuses_precisions_it_lacks"}),
])
def test_suite_fails_each_broken_backend_exactly_where_it_should(backend, expected, tmp_path):
    result, outcomes, data = certify(backend, tmp_path)
    assert result.returncode == 1, result.stdout[-2000:]
    assert failed(outcomes) == expected, outcomes
    assert data["verdict"] == "not certified" and f"{len(expected)} test(s) failed" in data["backends"][backend]["reasons"]
    assert f"verdict for {backend}: NOT CERTIFIED" in result.stdout


#: the tests that reach the backend itself (aipc.conformance.test_backend_itself) and the seeded
#: sampling test: each broken backend below runs only these (the rest of it is the reference)
ITSELF = "test_backend_itself or test_seed_makes_sampling_repeatable"


@pytest.mark.parametrize("backend, keyword, expected", [
    ("broken-refusals", ITSELF, {"test_backend_refuses_settings_it_does_not_claim",
                                 "test_backend_refuses_a_prompt_over_its_own_limit"}),
    ("broken-sampling", ITSELF, {"test_top_k_1_samples_the_greedy_tokens", "test_repetition_penalty_changes_the_answer"}),
    ("broken-greedy", ITSELF, {"test_sampling_varies_with_the_seed", "test_seed_makes_sampling_repeatable"}),
    ("broken-streaming", ITSELF, {"test_streaming_is_incremental"}),
    # alone: its runtime goes on computing in the background after the close (and would disturb the rest)
    ("broken-cancel", "test_closing_the_stream_stops_the_runtime", {"test_closing_the_stream_stops_the_runtime"}),
    # alone: it decodes greedily only, and two generations at once break each other's state
    ("broken-batch", "test_batch_of_generations_at_once", {"test_batch_of_generations_at_once"}),
])
def test_suite_reaches_the_backend_itself(backend, keyword, expected, tmp_path):
    result, outcomes, _ = certify(backend, tmp_path, "-k", keyword)
    assert result.returncode == 1, result.stdout[-2000:]
    assert failed(outcomes) == expected, outcomes


def test_suite_fails_a_longrope_model_capped_at_its_original_context(tmp_path):
    result, outcomes, _ = certify("broken-longrope", tmp_path, "-k", "test_longrope_prompts")
    assert result.returncode == 1, result.stdout[-2000:]
    lost = {name for name, (outcome, _) in outcomes.items() if outcome == "failed"}
    assert lost and all("long" in name or "crossing" in name for name in lost), outcomes
    assert all(outcome == "passed" for name, (outcome, _) in outcomes.items() if name.endswith("short]")), outcomes


def test_suite_fails_a_prefix_cache_that_reuses_stale_state(tmp_path):
    result, outcomes, _ = certify("broken-prefix", tmp_path)
    assert result.returncode == 1
    assert "test_edited_conversation_reuses_only_the_common_prefix" in failed(outcomes), outcomes
    # stale state spoils any later prompt sharing a template prefix: the token comparisons fail, nothing else
    assert failed(outcomes) <= {"test_next_turn_reuses_and_matches_cold_run", "test_interleaved_conversations_keep_their_state",
                                "test_edited_conversation_reuses_only_the_common_prefix",
                                "test_state_after_a_closed_stream_is_usable", "test_greedy_tokens_match_reference",
                                "test_a_conversation_through_the_crossing",
                                "test_constrained_greedy_output_matches_reference"}, outcomes


def test_suite_fails_a_backend_that_drops_the_constraint(tmp_path):
    result, outcomes, _ = certify("broken-constraint", tmp_path, "-k", "constrain or schema or regex",
                                  marks="real_model or not real_model")
    assert result.returncode == 1
    assert failed(outcomes) == {"test_json_schema_output_validates", "test_regex_and_grammar_output_match",
                                "test_constrained_greedy_output_matches_reference"}, outcomes


def test_suite_fails_a_drifting_fp16_on_token_agreement(tmp_path):
    result, outcomes, _ = certify("broken-fp16", tmp_path, "-k", "greedy", marks="real_model or not real_model")
    assert result.returncode == 1
    assert {n for n, (o, _) in outcomes.items() if o == "failed"} == {
        "test_greedy_tokens_match_reference_on_real_model[broken-fp16-fp16-CPU]"}, outcomes
    assert outcomes["test_greedy_tokens_match_reference[broken-fp16-fp32-CPU]"][0] == "passed"


def test_suite_reports_a_quantize_without_manifest(tmp_path):
    result, outcomes, _ = certify("broken-manifest", tmp_path)
    assert result.returncode == 1
    assert outcomes["test_backend_describes_itself[broken-manifest]"][0] == "passed"
    outcome, reason = outcomes["test_quantize_writes_manifest_and_loads[broken-manifest-fp32-CPU]"]
    assert outcome == "failed" and "quantize returned no manifest" in reason


def test_suite_reports_a_plugin_that_fails_to_import(tmp_path):
    result, outcomes, data = certify("broken-import", tmp_path)
    assert result.returncode == 1
    outcome, reason = outcomes["test_backend_describes_itself[broken-import]"]
    assert outcome == "failed" and "libnpu_driver.so" in reason
    assert "import failed" in data["backends"]["broken-import"]["error"]


def test_outside_package_is_found_and_certified(tmp_path):
    """A package made here, with only an entry point and a module, installed with pip."""
    package = tmp_path / "aipc-outside"
    (package / "aipc_outside").mkdir(parents=True)
    (package / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "aipc-outside"
        version = "1.2.3"
        [project.entry-points.aipc]
        outside = "aipc_outside"
        """))
    (package / "aipc_outside" / "__init__.py").write_text(textwrap.dedent("""\
        from dataclasses import replace
        from aipc import hookimpl
        from aipc.backends import reference
        from aipc.backends.reference import aipc_generate, aipc_load, aipc_quantize, aipc_tokenize

        @hookimpl
        def aipc_backend_info():
            return replace(reference.aipc_backend_info(), name="outside", version="1.2.3", priority=-5)
        """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(package)],
                   check=True, capture_output=True)
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "aipc", "backends", "--json"], capture_output=True, text=True, env=env)
    rows = {b["name"]: b for b in json.loads(listed.stdout)["backends"]}
    assert rows["outside"]["ok"] and rows["outside"]["version"] == "1.2.3"
    result, outcomes, data = certify("outside", tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:]
    assert data["backends"]["outside"]["version"] == "1.2.3" and data["totals"]["passed"] >= 10
    assert data["machine"]["cores"] and data["aipc_version"]
    # a run filtered with -m is never a certification, and the report says how it was run
    assert data["verdict"] == "not certified" and data["run"]["markexpr"] == "not real_model"
    assert data["backends"]["outside"]["reasons"][0] == "filtered with -m 'not real_model'"
    assert data["totals"]["deselected"] == len(data["deselected"]) > 0
    assert "-m" in data["run"]["arguments"] and data["skips"]
    assert "verdict for outside: NOT CERTIFIED: filtered with -m 'not real_model'" in result.stdout
    assert "aipc conformance" in result.stdout and "PASS  test_backend_describes_itself[outside]" in result.stdout


def test_suite_fails_an_int4_that_loses_the_answers(tmp_path):
    result, outcomes, _ = certify("broken-int4", tmp_path, "-k", "keeps_answers", marks="real_model")
    assert result.returncode == 1, result.stdout[-2000:]
    assert failed(outcomes) == {"test_lower_precision_keeps_answers"}, outcomes
    assert outcomes["test_lower_precision_keeps_answers[broken-int4-fp32-CPU]"][0] == "skipped"  # exact: compared by tokens
