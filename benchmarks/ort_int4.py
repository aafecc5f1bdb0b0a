"""Prototype (issue 16): ONNX Runtime's MatMulNBitsQuantizer (HQQ or GPTQ) over the directml backend's
fp32 artifact of SmolLM2, then sweep.py's accuracy on both question sets against transformers fp32.

    AIPC_HOME=.tox/aipc-home .tox/directml/bin/python benchmarks/ort_int4.py hqq 32 [gather]
    AIPC_HOME=.tox/aipc-home .tox/directml/bin/python benchmarks/ort_int4.py gptq 32 gather CALIBRATION.txt

Not a plugin path: findings (HQQ decodes at 1.5 tok/s, GPTQ projected at ~35 min) in README.md.
"""
import json, shutil, sys, time, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import aipc
from sweep import accuracy, greedy_answer, reference_answers
from aipc.sources import DEFAULT_MODEL

algo = sys.argv[1]; block = int(sys.argv[2]); gather = "gather" in sys.argv[3:]; nsamp = 16
fp32 = aipc.load(DEFAULT_MODEL, backend="directml", precision="fp32")
src = Path(fp32.artifact_dir); fp32.close()
work = Path(os.environ.get("TMPDIR", "/tmp")) / "aipc-ort-int4"
out = work / f"{algo}-b{block}{'-g' if gather else ''}"
if not (out / "done").exists():
    shutil.rmtree(out, ignore_errors=True); shutil.copytree(src, out)
    import onnx, numpy as np
    from onnxruntime.quantization.matmul_nbits_quantizer import (MatMulNBitsQuantizer, HQQWeightOnlyQuantConfig,
        GPTQWeightOnlyQuantConfig, DefaultWeightOnlyQuantConfig)
    from onnxruntime.quantization import CalibrationDataReader
    from tokenizers import Tokenizer
    started = time.perf_counter()
    if algo == "hqq":
        cfg = HQQWeightOnlyQuantConfig(block_size=block, bits=4, op_types_to_quantize=("MatMul",))
        model = onnx.load(str(src / "model.onnx"))
    else:
        from aipc.calibration import read_file
        texts = read_file(Path(sys.argv[-1]))[:nsamp]
        tok = Tokenizer.from_file(str(src / "tokenizer.json"))
        dec = json.loads((src / "genai_config.json").read_text())["model"]["decoder"]
        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = []
                for t in texts:
                    ids = np.array([tok.encode(t).ids[:256]], dtype=np.int64)
                    d = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
                    for i in range(dec["num_hidden_layers"]):
                        for kv in ("key", "value"):
                            d[f"past_key_values.{i}.{kv}"] = np.zeros((1, dec["num_key_value_heads"], 0, dec["head_size"]), np.float32)
                    self.items.append(d)
                self.it = iter(self.items)
            def get_next(self):
                return next(self.it, None)
            def __iter__(self):
                return iter(self.items)
        cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader(), block_size=128, op_types_to_quantize=("MatMul",))
        model = onnx.load(str(src / "model.onnx"))
    q = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=False, accuracy_level=4, algo_config=cfg, op_types_to_quantize=("MatMul",))
    q.process()
    m = q.model.model if hasattr(q.model, "model") else q.model
    if gather:
        q2 = MatMulNBitsQuantizer(m, block_size=block, is_symmetric=True, accuracy_level=4,
                                  algo_config=DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, op_types_to_quantize=("Gather",)),
                                  op_types_to_quantize=("Gather",))
        q2.process(); m = q2.model.model
    (out / "model.onnx").unlink(); (out / "model.onnx.data").unlink()
    onnx.save_model(m, str(out / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    man = json.loads((out / "aipc.json").read_text()); man["precision"] = "int4"
    (out / "aipc.json").write_text(json.dumps(man))
    print("quantize s", round(time.perf_counter() - started, 1), flush=True)
    (out / "done").write_text("")
print(sorted(p.name for p in out.iterdir()), sum(p.stat().st_size for p in out.iterdir()) / 1e6, "MB", flush=True)
model = aipc.load(str(out), backend="directml")
print(greedy_answer(model, "What is the capital of France?", 16)[1], flush=True)
refpath = work / "reference.json"
if refpath.exists():
    raw = json.loads(refpath.read_text()); reference = {tuple(json.loads(k)) if k.startswith("[") else k: v for k, v in raw.items()}
else:
    reference = reference_answers(DEFAULT_MODEL, 48)
    refpath.write_text(json.dumps({(json.dumps(list(k)) if isinstance(k, tuple) else k): v for k, v in reference.items()}))
row = accuracy(model, reference, 48)
print(algo, block, gather, json.dumps(row))
