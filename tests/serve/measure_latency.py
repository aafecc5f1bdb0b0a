"""Time to first streamed token: the openai client against ``aipc serve`` vs the Python API.

Not a test (pytest does not collect it). Run from the repository root:

    AIPC_HOME=... python tests/serve/measure_latency.py [--reps 7] [--model smollm2-135m-instruct]

Both sides load the same model on the reference backend (same cache artifact) and are asked
the same question, greedy, alternately (so a busy machine slows both alike); the figure is the
wall time from the call to the first non-empty text piece. Medians are printed, with the
server's overhead (HTTP, JSON, SSE, the worker thread hand-off), both as the paired difference
and as the client's figure minus the core's own time to first token logged by the server
(that one also includes the chat template and tokenizing, and is immune to the machine's noise
between the two runs of a pair).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    import tempfile

    import aipc
    from serve_support import Server

    question = "What is the capital of France?"
    messages = [{"role": "user", "content": question}]
    log = Path(tempfile.mkdtemp()) / "server.log"
    server = Server(["--model", args.model, "--backend", "transformers"], log)
    try:
        client = server.client()
        model = aipc.load(args.model, backend="transformers")

        def via_server() -> tuple[float, str]:
            started = time.perf_counter()
            stream = client.chat.completions.create(model=args.model, messages=messages, max_tokens=args.max_tokens,
                                                    stream=True)
            first, text = None, []
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    first = first or time.perf_counter() - started
                    text.append(piece)
            return first, "".join(text)

        def via_api() -> tuple[float, str]:
            started = time.perf_counter()
            first, text = None, []
            for piece in model.generate(question, max_new_tokens=args.max_tokens):
                if piece:
                    first = first or time.perf_counter() - started
                    text.append(piece)
            return first, "".join(text)

        via_server(), via_api()  # warm both (the server loads its model on its first request)
        server_times, api_times = [], []
        for _ in range(args.reps):
            s, server_text = via_server()
            a, api_text = via_api()
            server_times.append(s)
            api_times.append(a)
            assert server_text == api_text, (server_text, api_text)
        print(f"model {args.model} on transformers/CPU, {args.reps} repetitions, answer {api_text!r}")
        overhead = [s - a for s, a in zip(server_times, api_times, strict=True)]
        # the server logs the core's own time to first token (from the backend call) for every request
        core = [float(t) for t in re.findall(r"ttft=([0-9.]+)s", server.log())][1:]  # after the warm-up
        beyond_core = [s - c for s, c in zip(server_times, core, strict=True)]
        for label, values in (("openai client via aipc serve", server_times), ("Python API model.generate", api_times),
                              ("server overhead (paired difference)", overhead),
                              ("client TTFT minus the core's TTFT", beyond_core)):
            all_ms = ", ".join(f"{v * 1000:.0f}" for v in values)
            print(f"{label:36} median {statistics.median(values) * 1000:6.0f} ms   min {min(values) * 1000:6.0f} ms"
                  f"   ({all_ms})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
