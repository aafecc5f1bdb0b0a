"""Plugin discovery, allow/block lists, broken plugins and call routing."""

import json

import pytest

from aipc import hookimpl
from aipc.errors import BackendUnavailableError, UnknownBackendError
from aipc.plugins import Registry
from aipc.types import BackendInfo, Device


def install_fake_distribution(site, dist, module, source):
    """Lay out a distribution (module + dist-info with an ``aipc`` entry point) the way pip would."""
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[aipc]\n{dist.split('-')[-1]} = {module}\n")


@pytest.fixture
def broken_site(tmp_path):
    install_fake_distribution(tmp_path, "aipc-broken", "aipc_broken", "raise ImportError('needs libfoo.so')\n")
    install_fake_distribution(tmp_path, "aipc-liar", "aipc_liar",
                              "from aipc import hookimpl\n@hookimpl\ndef aipc_backend_info():\n    return 'not info'\n")
    return tmp_path


def test_broken_plugins_are_listed_and_the_rest_work(broken_site, aipc_cli, tiny_phi3):
    env = {"PYTHONPATH": str(broken_site)}
    listed = aipc_cli("backends", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)["backends"]}
    assert not rows["broken"]["ok"] and "needs libfoo.so" in rows["broken"]["error"]
    assert not rows["liar"]["ok"] and "not BackendInfo" in rows["liar"]["error"]
    assert rows["transformers"]["ok"]
    text = aipc_cli("backends", env=env).stdout
    assert "broken: BROKEN - import failed: ImportError: needs libfoo.so" in text
    ran = aipc_cli("run", str(tiny_phi3), "Hi", "-n", "3", env=env)
    assert ran.returncode == 0, ran.stderr
    chosen = aipc_cli("run", str(tiny_phi3), "Hi", "-b", "broken", env=env)
    assert chosen.returncode == 1 and "backend 'broken' is broken: import failed" in chosen.stderr


@pytest.mark.parametrize("env", [{"AIPC_PLUGINS": ""}, {"AIPC_DISABLE_PLUGINS": "transformers"},
                                 {"AIPC_PLUGINS": "other,another"}])
def test_allow_and_block_lists(env, aipc_cli, tiny_phi3):
    listed = json.loads(aipc_cli("backends", "--json", env=env).stdout)
    assert listed["backends"] == [] and listed["default"] is None
    ran = aipc_cli("run", str(tiny_phi3), "Hi", env=env)
    assert ran.returncode == 1 and ran.stderr.strip() == "Error: no backend can run on this machine (see `aipc backends`)"


def test_allow_list_keeps_the_named_backend(aipc_cli):
    listed = json.loads(aipc_cli("backends", "--json", env={"AIPC_PLUGINS": "transformers"}).stdout)
    assert [b["name"] for b in listed["backends"]] == ["transformers"]


class Spy:
    """A plugin that records which hooks reached it (tests the router, not a runtime)."""

    def __init__(self, name, priority, device):
        self.name, self.priority, self.device, self.calls = name, priority, device, []

    @hookimpl
    def aipc_backend_info(self):
        self.calls.append("info")
        return BackendInfo(self.name, "1", "spy", (self.device,), "fp32", priority=self.priority)

    @hookimpl
    def aipc_tokenize(self, model, text):
        self.calls.append("tokenize")
        return [len(self.name)]


def test_calls_reach_only_the_chosen_backend():
    registry = Registry()
    a = Spy("a", 1, Device("CPU", ("fp32",)))
    b = Spy("bb", 2, Device("CPU", ("fp32",)))
    registry.register(a, "a")
    registry.register(b, "bb")
    assert registry.call("a", "aipc_tokenize", model=None, text="x") == [1]
    assert a.calls == ["info", "tokenize"] and b.calls == ["info"]


def test_default_prefers_present_accelerators_then_priority():
    registry = Registry()
    registry.register(Spy("cpu_high", 50, Device("CPU", ("fp32",))), "cpu_high")
    registry.register(Spy("npu_absent", 90, Device("NPU", ("int4",), present=False, reason="no NPU", accelerator=True)), "npu_absent")
    assert registry.default().name == "cpu_high"
    registry.register(Spy("gpu", 10, Device("GPU", ("fp16",), accelerator=True)), "gpu")
    assert registry.default().name == "gpu"


def test_unknown_and_misnamed_backends():
    registry = Registry()
    with pytest.raises(UnknownBackendError, match="unknown backend 'x'"):
        registry.get("x")
    registry.register(Spy("real", 1, Device("CPU", ("fp32",))), "alias")
    with pytest.raises(BackendUnavailableError, match="describes itself as 'real'"):
        registry.get("alias")
