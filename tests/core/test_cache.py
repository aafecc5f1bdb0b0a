import json
import os
import signal
import subprocess
import sys
import time

import pytest

from aipc import cache
from aipc.errors import CacheError


def test_atomic_dir_renames_only_when_complete(tmp_path):
    final = tmp_path / "artifact"
    with cache.atomic_dir(final) as tmp:
        (tmp / "weights").write_text("w")
        assert not final.exists()
    assert (final / "weights").read_text() == "w"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_atomic_dir_removes_the_temporary_folder_on_failure(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(KeyboardInterrupt):
        with cache.atomic_dir(final) as tmp:
            (tmp / "half").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_an_existing_entry_whole(tmp_path):
    final = tmp_path / "artifact"
    for value in ("old", "new"):
        with cache.atomic_dir(final) as tmp:
            (tmp / "v").write_text(value)
    assert (final / "v").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_killed_writer_leaves_nothing_that_counts_and_next_run_recovers(tmp_path):
    final = tmp_path / "artifact"
    code = ("import sys, time; from pathlib import Path; from aipc import cache\n"
            "with cache.atomic_dir(Path(sys.argv[1])) as tmp:\n"
            "    (tmp / 'part').write_text('x'); print('writing', flush=True); time.sleep(60)\n")
    writer = subprocess.Popen([sys.executable, "-c", code, str(final)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    assert not final.exists()
    assert [p.name.startswith(cache.TMP_PREFIX) for p in tmp_path.iterdir()] == [True]
    with cache.atomic_dir(final) as tmp:
        (tmp / "done").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"], "the stale temporary folder was not cleaned"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_cache_is_a_clear_error(tmp_path):
    tmp_path.chmod(0o500)
    with pytest.raises(CacheError, match="cannot"):
        with cache.atomic_dir(tmp_path / "sub" / "x"):
            pass


def test_unwritable_cache_is_a_clear_error_from_the_cli(tmp_path, tiny_phi3, aipc_cli):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = aipc_cli("quantize", str(tiny_phi3), "-b", "transformers", env={"AIPC_HOME": str(blocker)})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: cannot") and "Traceback" not in result.stderr, result.stderr


def test_interrupted_gguf_conversion_is_redone(tmp_path, smollm2, aipc_cli):
    """Kill `aipc quantize` of SmolLM2 mid-conversion: no source counts as converted, and the
    next run converts it again and works."""
    home = tmp_path / "home"
    shared = cache.home() / "downloads"
    (home / "downloads").mkdir(parents=True)
    for entry in shared.iterdir():  # reuse the fetched wheel content, not the converted folder
        os.symlink(entry, home / "downloads" / entry.name)
    env = {**os.environ, "AIPC_HOME": str(home)}
    args = [sys.executable, "-m", "aipc", "quantize", "smollm2-135m-instruct", "-b", "transformers"]
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sources = home / "sources"
    deadline = time.time() + 120
    while time.time() < deadline and not (sources.is_dir() and any(p.name.startswith(".tmp-") for p in sources.iterdir())):
        time.sleep(0.2)
    time.sleep(3)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert [p.name.startswith(".tmp-") for p in sources.iterdir()] == [True]
    listing = json.loads(aipc_cli("models", "--json", env={"AIPC_HOME": str(home)}).stdout)
    assert [e for e in listing["cached"] if e["kind"] == "source"] == [], "a half-converted source is listed"
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert [p.name.startswith(".tmp-") for p in sources.iterdir()] == [False]


def test_a_model_named_two_ways_is_quantized_once(smollm2):
    """The catalogue name, then the folder it resolved to: one fingerprint, one artifact."""
    from aipc import quantize
    from aipc.sources import DEFAULT_MODEL

    by_name = quantize(DEFAULT_MODEL, backend="transformers", precision="fp32")
    by_path = quantize(str(smollm2), backend="transformers", precision="fp32")
    assert by_path == by_name
