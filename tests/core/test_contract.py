"""The plugin contract in one place: its modules import nothing above them; option names are checked
by the core against what a backend declares; the helpers plugin authors import; the default backend."""

import ast
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import aipc
from aipc import artifacts, hookimpl
from aipc.errors import InvalidConfigError, InvalidModelError, UnsupportedArchitectureError
from aipc.options import UPPERCASE, check_options
from aipc.plugins import Registry
from aipc.types import BackendInfo, Device

SRC = Path(aipc.__file__).parent
CONTRACT = ("hookspecs", "types", "plugins", "errors", "constraints", "options", "artifacts")
ABOVE = {"runtime", "chat", "cli", "sources", "cache", "bench", "server", "conformance", "backends", "streaming"}


def test_the_contract_imports_no_runtime_in_a_fresh_interpreter():
    code = ("import sys, aipc.hookspecs, aipc.types, aipc.plugins, aipc.options, aipc.artifacts\n"
            "print(sorted(m for m in sys.modules if m.startswith('aipc')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[1] for name in json.loads(done.stdout.replace("'", '"')) if "." in name}
    assert not loaded & ABOVE, f"the contract modules imported {sorted(loaded & ABOVE)}"
    assert "aipc.runtime" not in done.stdout


@pytest.mark.parametrize("module", CONTRACT)
def test_contract_modules_name_nothing_above_them_not_even_for_type_checking(module):
    tree = ast.parse((SRC / f"{module}.py").read_text())
    named = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            named |= {(node.module or "").split(".")[0]} | ({a.name for a in node.names} if not node.module else set())
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aipc."):
            named.add(node.module.split(".")[1])
    assert not named & ABOVE, f"aipc.{module} imports {sorted(named & ABOVE)}"


def test_request_types_keep_their_old_home():
    from aipc import runtime, types

    for name in ("LoadRequest", "QuantizeRequest", "LoadedModel"):
        assert getattr(runtime, name) is getattr(types, name) is getattr(aipc, name)
    assert runtime.thread_count and runtime.parse_options
    from aipc.types import option_bool, option_int  # noqa: F401 - still importable from their first home


# ---------------------------------------------------------------------------------- options


def test_unknown_option_is_one_line_naming_it_and_the_accepted_ones():
    with pytest.raises(InvalidConfigError) as error:
        check_options("x", {"thraeds": "2"}, {"threads": "help", "cache": "help"})
    message = str(error.value)
    assert "thraeds" in message and "threads, cache" in message and "\n" not in message


def test_undeclared_options_pass_and_patterns_admit_runtime_properties():
    check_options("old", {"anything": "1"}, None)  # a backend that declares nothing: unchecked, as before
    check_options("ov", {"KV_CACHE_PRECISION": "u8", "threads": "1"}, {"threads": ""}, UPPERCASE)
    with pytest.raises(InvalidConfigError, match="has no option kv_cache"):
        check_options("ov", {"kv_cache": "u8"}, {"threads": ""}, UPPERCASE)
    with pytest.raises(InvalidConfigError, match="accepts: none"):
        check_options("strict", {"a": "1"}, {})


class Recorder:
    """A backend that declares one option and records whether quantize was reached."""

    def __init__(self, options):
        self.options, self.reached = options, False

    @hookimpl
    def aipc_backend_info(self):
        return BackendInfo("rec", "1", "records", (Device("CPU", ("fp32",)),), "fp32", options=self.options)

    @hookimpl
    def aipc_quantize(self, request):
        self.reached = True
        return request.manifest()


def _with_registry(monkeypatch, plugin):
    from aipc import runtime

    registry = Registry()
    registry.register(plugin, "rec")
    monkeypatch.setattr(runtime, "registry", lambda: registry)


def test_the_core_refuses_an_unknown_option_before_the_backend_is_reached(monkeypatch, tiny_phi3, tmp_path):
    plugin = Recorder({"threads": "threads"})
    _with_registry(monkeypatch, plugin)
    with pytest.raises(InvalidConfigError, match="has no option thread .*accepts: threads"):
        aipc.quantize(str(tiny_phi3), backend="rec", options=["thread=2"], output=tmp_path / "out")
    assert not plugin.reached


def test_a_backend_declaring_no_options_still_gets_them(monkeypatch, tiny_phi3, tmp_path):
    plugin = Recorder(None)
    _with_registry(monkeypatch, plugin)
    out = aipc.quantize(str(tiny_phi3), backend="rec", options=["whatever=1"], output=tmp_path / "out")
    assert plugin.reached and json.loads((out / "aipc.json").read_text())["options"] == {"whatever": "1"}


def test_the_core_gives_every_artifact_the_tokenizer_and_chat_template(monkeypatch, tiny_phi3, tmp_path):
    """The Recorder writes no file at all: the core copies the side files it reads."""
    _with_registry(monkeypatch, Recorder(None))
    out = aipc.quantize(str(tiny_phi3), backend="rec", output=tmp_path / "out")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name


def test_backends_lists_options_in_text_and_json(aipc_cli):
    text = aipc_cli("backends").stdout
    assert "options (-o KEY=VALUE; help: --json): threads" in text
    listed = json.loads(aipc_cli("backends", "--json").stdout)
    reference = next(b for b in listed["backends"] if b["name"] == "transformers")
    assert "threads" in reference["options"] and reference["option_pattern"] == ""


def test_run_with_a_misspelt_option_is_one_line(aipc_cli, tiny_phi3):
    result = aipc_cli("run", str(tiny_phi3), "Hi", "-b", "transformers", "-o", "thraeds=1", "-n", "2")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: backend 'transformers' has no option thraeds (it accepts: threads; see `aipc backends`)")


# ---------------------------------------------------------------------------------- artifacts helpers


def _write(folder: Path, name: str, data) -> None:
    (folder / name).write_text(json.dumps(data))


def test_eos_ids_come_from_config_and_generation_config(tmp_path):
    _write(tmp_path, "config.json", {"eos_token_id": 2, "max_position_embeddings": 2048})
    _write(tmp_path, "generation_config.json", {"eos_token_id": [2, 32007]})
    assert artifacts.eos_token_ids(tmp_path) == {2, 32007}
    assert artifacts.eos_token_ids(tmp_path / "missing") == set()


def test_context_length_from_a_config(tmp_path):
    phi3 = {"model_type": "phi3", "max_position_embeddings": 131072, "original_max_position_embeddings": 4096}
    assert artifacts.context_length(phi3) == 131072
    assert artifacts.context_length(phi3, phi3_original=True) == 4096
    assert artifacts.context_length({"text_config": {"n_positions": 1024}}) == 1024
    assert artifacts.context_length({}) is None
    _write(tmp_path, "config.json", {"seq_length": 512})
    assert artifacts.context_length(tmp_path) == 512


def test_side_files_are_copied_without_overwriting(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir(), out.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja", "model.safetensors"):
        (source / name).write_text(name)
    (out / "tokenizer.json").write_text("the backend's own")
    assert artifacts.copy_side_files(source, out) == ["chat_template.jinja"]
    assert (out / "tokenizer.json").read_text() == "the backend's own" and not (out / "model.safetensors").exists()


def test_load_error_is_one_line_and_unsupported_architecture_is_an_invalid_model():
    error = artifacts.load_error(Path("/m"), OSError("no file named model.safetensors\nmore detail"))
    assert isinstance(error, InvalidModelError) and str(error) == "cannot load /m: no file named model.safetensors"
    assert issubclass(UnsupportedArchitectureError, InvalidModelError)


def test_chat_messages_without_a_chat_template_are_an_error_not_joined_lines(tiny_phi3, tmp_path):
    folder = tmp_path / "no-template"
    folder.mkdir()
    for file in tiny_phi3.iterdir():
        if file.is_file() and file.name != "chat_template.jinja":
            (folder / file.name).write_bytes(file.read_bytes())
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama-like"}))  # no Phi-3 fallback
    model = aipc.load(str(tiny_phi3), backend="transformers")
    model.template = None  # as loaded from `folder`
    with pytest.raises(InvalidModelError, match="has no chat template"):
        model.chat([{"role": "user", "content": "Hi"}])
    assert model.complete("Hi", raw=True, max_new_tokens=2) is not None  # raw text needs no template
    from aipc.chat import ChatTemplate

    assert ChatTemplate.from_folder(folder) is None


# ---------------------------------------------------------------------------------- the default backend


class Describe:
    def __init__(self, name, priority, *devices):
        self.name, self.priority, self.devices = name, priority, devices

    @hookimpl
    def aipc_backend_info(self):
        return BackendInfo(self.name, "1", "d", self.devices, self.devices[0].precisions[0], priority=self.priority)


CPU = Device("CPU", ("fp32",))
NPU = Device("NPU", ("int4",), accelerator=True)
NPU_ABSENT = replace(NPU, present=False, reason="no NPU here")


def _registry(*entries):
    registry = Registry()
    for plugin, first_party in entries:
        registry.register(plugin, plugin.name, first_party=first_party)
    return registry


def test_a_cpu_only_third_party_plugin_never_outranks_the_built_ins():
    registry = _registry((Describe("transformers", 0, CPU), True), (Describe("theirs", 99, NPU_ABSENT, CPU), False))
    assert registry.default().name == "transformers"
    registry = _registry((Describe("openvino", 20, CPU), True), (Describe("transformers", 0, CPU), True))
    assert registry.default().name == "openvino"  # among the built-ins on the CPU: priority


def test_a_third_party_plugin_wins_with_a_present_accelerator_and_alone():
    registry = _registry((Describe("transformers", 0, CPU), True), (Describe("theirs", 5, NPU), False))
    assert registry.default().name == "theirs"
    assert _registry((Describe("theirs", 5, CPU), False)).default().name == "theirs"  # nothing else runs


def test_entry_points_of_aipc_itself_are_first_party():
    from aipc.plugins import registry

    assert registry().backends["transformers"].first_party


def test_a_seed_for_a_backend_without_seed_determinism_is_warned_about(tiny_phi3, monkeypatch):
    from dataclasses import replace

    import pytest

    import aipc

    model = aipc.load(str(tiny_phi3), backend="transformers", precision="fp32")
    info = model._backend.info
    monkeypatch.setattr(model._backend, "info", replace(info, capabilities=replace(info.capabilities, seed_determinism=False)))
    with pytest.warns(UserWarning, match="does not claim seed determinism"):
        model.complete("hi", max_new_tokens=2, temperature=0.7, seed=3)
