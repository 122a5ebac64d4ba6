"""`make bench`: whole-process qtool against its Python peers on the same inputs, in one run.

Each case runs qtool and the peer alternately (`--repeat` times, best time kept) under
/usr/bin/time -v for peak RSS; the table gives throughput, peak RSS and the ratio. The work folder
defaults to /dev/shm so the figures measure the tools, not this machine's disk (which writes at
about 0.3 GB/s with fsync); pass --dir to measure on disk.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def run(cmd, env=None):
    """Runs a command under /usr/bin/time -v; returns (wall seconds, peak RSS bytes, stdout)."""
    start = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if p.returncode != 0:
        sys.exit(f"benchmark command failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) * 1024
    return wall, rss, p.stdout


def remove(*paths):
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def best_of(repeat, qcmd, pcmd, env, outputs):
    """Runs qtool and its peer alternately `repeat` times, each from no output (replacing a 1 GB
    file would charge its freeing to whoever renames); keeps each one's fastest run as
    {"wall", "rss", "inproc"} (the peer prints its in-process seconds as JSON)."""
    best = {"qtool": None, "peer": None}
    for _ in range(repeat):
        for who, cmd in (("qtool", qcmd), ("peer", pcmd)):
            remove(*outputs)
            wall, rss, out = run(cmd, env)
            inproc = json.loads(out)["seconds"] if who == "peer" else wall
            if best[who] is None or wall < best[who]["wall"]:
                best[who] = {"wall": wall, "rss": rss, "inproc": inproc}
    return best["qtool"], best["peer"]


def make_input(path, gigabytes):
    """A float32 safetensors file of Llama-like 2-D tensors, written by the safetensors library."""
    if path.exists():
        return
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    rows, cols = 4096, 1024  # 16 MiB per tensor
    count = max(1, round(gigabytes * 1e9 / (rows * cols * 4)))
    tensors = {f"model.layers.{i // 4}.mlp.proj_{i % 4}.weight": torch.randn(rows, cols) for i in range(count)}
    tensors["model.norm.weight"] = torch.ones(cols)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    tmp.rename(path)


def make_bf16_input(path, params):
    """A bf16 safetensors file of 2048×2048 weights (plus a norm) with about `params` parameters."""
    if path.exists():
        return
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    count = max(1, round(params / (2048 * 2048)))
    tensors = {f"model.layers.{i // 4}.mlp.proj_{i % 4}.weight": torch.randn(2048, 2048).to(torch.bfloat16) for i in range(count)}
    tensors["model.norm.weight"] = torch.ones(2048, dtype=torch.bfloat16)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    tmp.rename(path)


def quantize_cases(args, work, env):
    """qtool quantize / dequantize (whole process) against bitsandbytes in process, same input."""
    src = work / "input-bf16-134M.safetensors"
    make_bf16_input(src, 134e6)
    peer = None
    best = {"quantize": None, "dequantize": None}
    for _ in range(args.repeat):
        for f in ("q.nf4", "d.safetensors"):
            (work / f).unlink(missing_ok=True)
        q = run([args.qtool, "quantize", str(src), str(work / "q.nf4"), "--quiet"], env)
        d = run([args.qtool, "dequantize", str(work / "q.nf4"), str(work / "d.safetensors"), "--quiet"], env)
        _, prss, out = run([PY, str(ROOT / "Benchmarks/peer_quantize.py"), str(src)], env)
        result = json.loads(out)
        if peer is None or result["quantize_seconds"] < peer["quantize_seconds"]:
            peer = dict(result, rss=prss) if peer is None else dict(peer, quantize_seconds=result["quantize_seconds"])
        if result["dequantize_seconds"] < peer["dequantize_seconds"]:
            peer["dequantize_seconds"] = result["dequantize_seconds"]
        for name, (wall, rss, _) in (("quantize", q), ("dequantize", d)):
            if best[name] is None or wall < best[name][0]:
                best[name] = (wall, rss)
    # The I/O floor of each: read the whole input once, write an output of the same size
    # (`cat in >/dev/null; head -c SIZE ... >out`), best of the same number of runs.
    qsize, dsize = (work / "q.nf4").stat().st_size, (work / "d.safetensors").stat().st_size
    floor = {}
    for name, inp, size, source in (("quantize", src, qsize, src), ("dequantize", work / "q.nf4", dsize, "/dev/zero")):
        for _ in range(args.repeat):
            (work / "floor.out").unlink(missing_ok=True)
            wall, _, _ = run(["sh", "-c", f"cat '{inp}' >/dev/null; head -c {size} '{source}' > '{work / 'floor.out'}'"], env)
            floor[name] = min(floor.get(name, wall), wall)
    for f in ("q.nf4", "d.safetensors", "floor.out"):
        (work / f).unlink(missing_ok=True)
    params = peer["parameters"]
    rows = []
    for name in ("quantize", "dequantize"):
        wall, rss = best[name]
        peer_seconds = peer[f"{name}_seconds"]
        rows.append({"case": f"{name} (NF4, DQ, b64)", "parameters": params, "qtool_seconds": wall,
                     "qtool_mparams_per_s": params / wall / 1e6, "qtool_peak_rss": rss,
                     "peer_seconds": peer_seconds, "peer_mparams_per_s": params / peer_seconds / 1e6,
                     "speedup": peer_seconds / wall, "io_floor_seconds": floor[name], "over_io_floor": wall / floor[name]})
    return rows, src.stat().st_size


def make_merge_inputs(work):
    """A sharded bf16 Llama of about 1.1 GB (transformers save_pretrained, 500 MB shards) and an
    r=16 PEFT adapter on all its linear layers, with random (non-zero) B factors."""
    base, adapter = work / "merge-base-bf16", work / "merge-adapter-r16"
    if (adapter / "adapter_model.safetensors").exists():
        return base, adapter
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=18,
                         num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(base, max_shard_size="500MB")
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.copy_(0.02 * torch.randn(param.shape))
    peft_model.save_pretrained(adapter)
    return base, adapter


def merge_case(args, work, env):
    """qtool merge against transformers + PEFT load, merge_and_unload, save_pretrained (both whole
    processes, same files)."""
    base, adapter = make_merge_inputs(work)
    shards = sorted(base.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in shards)
    largest = max(f.stat().st_size for f in shards)
    # qtool's sgemm may use every core, as torch does.
    env = {k: v for k, v in env.items() if k != "OPENBLAS_NUM_THREADS"}
    outputs = (work / "qm", work / "pm")
    q, p = best_of(args.repeat, [args.qtool, "merge", str(base), "--adapter", str(adapter), "-o", str(outputs[0]), "--quiet"],
                   [PY, str(ROOT / "Benchmarks/peer_merge.py"), str(base), str(adapter), str(outputs[1]), "500MB"], env, outputs)
    # The same merge on OpenBLAS's generic kernel (what Debian's OpenBLAS picks by itself on CPUs
    # it does not know), alternating with the kernel qtool chooses: the gain of that choice.
    qcmd = [args.qtool, "merge", str(base), "--adapter", str(adapter), "-o", str(outputs[0]), "--quiet"]
    own, generic = q["wall"], None
    for _ in range(args.repeat):
        for pinned in (None, "Prescott"):
            remove(*outputs)
            wall, _, _ = run(qcmd, env if pinned is None else dict(env, OPENBLAS_CORETYPE=pinned))
            if pinned is None:
                own = min(own, wall)
            else:
                generic = wall if generic is None else min(generic, wall)
    remove(*outputs)
    return {"case": "merge r=16 all-linear", "input_bytes": size, "largest_shard": largest,
            "qtool_own_kernel_seconds": own, "qtool_generic_kernel_seconds": generic,
            "qtool_seconds": q["wall"], "qtool_peak_rss": q["rss"], "peer_seconds": p["wall"],
            "peer_inprocess_seconds": p["inproc"], "peer_peak_rss": p["rss"],
            "speedup_vs_peer_process": p["wall"] / q["wall"], "speedup_vs_peer_inprocess": p["inproc"] / q["wall"]}


def make_hdf5_input(work):
    """About 1 GB of float32 in an HDF5 tree written by h5py: 64 datasets of 4096×1024 in groups,
    contiguous (h5py's default), plus a small chunked gzip dataset."""
    path = work / "input-f32-1GB.h5"
    if path.exists():
        return path
    import h5py
    import numpy as np
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        for i in range(64):
            f.create_dataset(f"model/layers/{i // 4}/proj_{i % 4}/kernel", data=rng.standard_normal((4096, 1024), dtype=np.float32))
        f.create_dataset("model/norm", data=np.ones(1024, np.float32), chunks=(256,), compression="gzip")
    tmp.rename(path)
    return path


def hdf5_case(args, work, env):
    """qtool convert HDF5 → safetensors against h5py + safetensors doing the same copy."""
    src = make_hdf5_input(work)
    size = src.stat().st_size
    outputs = (work / "h.safetensors", work / "hp.safetensors")
    q, p = best_of(args.repeat, [args.qtool, "convert", str(src), str(outputs[0]), "--quiet"],
                   [PY, str(ROOT / "Benchmarks/peer_hdf5.py"), str(src), str(outputs[1])], env, outputs)
    remove(*outputs)
    return {"case": "hdf5 -> safetensors", "input_bytes": size, "qtool_seconds": q["wall"], "qtool_gbps": size / q["wall"] / 1e9,
            "qtool_peak_rss": q["rss"], "peer_seconds": p["wall"], "peer_inprocess_seconds": p["inproc"],
            "peer_gbps": size / p["inproc"] / 1e9, "peer_peak_rss": p["rss"],
            "speedup_vs_peer_inprocess": p["inproc"] / q["wall"], "speedup_vs_peer_process": p["wall"] / q["wall"]}


def make_tokenize_input(work):
    """About 3 MB of text: the tokenizers' training prose (fixtures/text/corpus.txt) and the
    multilingual paragraph of the tokenizer goldens (nine scripts, emoji), repeated."""
    path = work / "tokenize-input.txt"
    goldens = json.loads((ROOT / "fixtures/tokenizers/goldens.json").read_text())
    paragraph = next(c["text"] for c in goldens["tokenizers"]["tiny-llama"]["cases"] if c["name"] == "paragraph")
    text = ((ROOT / "fixtures/text/corpus.txt").read_text() + paragraph * 20) * 16
    path.write_text(text)
    return path


def tokenize_cases(args, work, env):
    """qtool tokenize (whole process, --json to a file; and the encoding alone, --count) against
    HF tokenizers' encode on one thread in process, loading excluded; the ids must be equal."""
    text = make_tokenize_input(work)
    size = text.stat().st_size
    rows = []
    for name in ["llama3-bytelevel", "llama2-legacy"]:
        tokenizer = ROOT / "fixtures/tokenizers" / name / "tokenizer.json"
        best = None
        for _ in range(args.repeat):
            wall, rss, out = run([args.qtool, "tokenize", str(tokenizer), "--file", str(text), "--json"], env)
            if best is None or wall < best[0]:
                best = (wall, rss, out)
        qtool_ids = json.loads(best[2])["ids"]
        encode = min(float(run([args.qtool, "tokenize", str(tokenizer), "--file", str(text), "--count"], env)[2].split()[1])
                     for _ in range(args.repeat))
        peer_ids = work / "peer-ids.json"
        wall, rss, out = run([PY, str(ROOT / "Benchmarks/peer_tokenize.py"), str(tokenizer), str(text), str(peer_ids)],
                             dict(env, TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1"))
        peer = json.loads(out)
        same = json.loads(peer_ids.read_text()) == qtool_ids
        peer_ids.unlink()
        rows.append({"case": f"tokenize {name}", "input_bytes": size, "tokens": len(qtool_ids),
                     "qtool_seconds": best[0], "qtool_mbps": size / best[0] / 1e6, "qtool_peak_rss": best[1],
                     "qtool_encode_seconds": encode, "qtool_encode_mbps": size / encode / 1e6,
                     "peer_seconds": peer["seconds"], "peer_mbps": size / peer["seconds"] / 1e6,
                     "peer_lines_seconds": peer["lines_seconds"], "peer_lines_mbps": size / peer["lines_seconds"] / 1e6,
                     "peer_peak_rss": rss, "speedup_vs_peer": peer["seconds"] / best[0],
                     "encode_speedup_vs_peer": peer["seconds"] / encode,
                     "same_ids": same})
    return rows


def tokenize_table(args, work, env):
    rows = tokenize_cases(args, work, env)
    table(f"{'case':26} {'qtool s':>8} {'MB/s':>6} {'encode MB/s':>11} {'peak RSS':>9} | {'HF MB/s':>7} {'by line':>7} | "
          f"{'× HF':>5} {'encode × HF':>11} {'same ids':>8}",
          [f"{r['case']:26} {r['qtool_seconds']:8.3f} {r['qtool_mbps']:6.1f} {r['qtool_encode_mbps']:11.1f} "
           f"{fmt_bytes(r['qtool_peak_rss']):>9} | {r['peer_mbps']:7.2f} {r['peer_lines_mbps']:7.2f} | "
           f"{r['speedup_vs_peer']:5.1f} {r['encode_speedup_vs_peer']:11.1f} {str(r['same_ids']):>8}" for r in rows],
          f"tokenize: {rows[0]['input_bytes'] / 1e6:.1f} MB of text (English prose, nine scripts, emoji) as one string; "
          f"qtool: whole process with --json (encode MB/s: the encoding alone, --count); HF: tokenizers encode on one "
          f"thread in process, loading excluded (by line: each line encoded apart, other ids, for reference); "
          f"× HF: HF's in-process seconds over qtool's")
    return rows


def verify_table(args, work, env):
    """`qtool verify` of a .nf4 over 1 GB (qtool's NF4 of the 4.3 GB bf16 memory input): integrity
    only — the header, every section's checksum, every byte of the file accounted for, finite
    scales — in GB/s of the file, best of --repeat whole processes. Target: at least 2 GB/s."""
    src, _ = make_memory_inputs(work)
    nf4 = work / "verify.nf4"
    if not nf4.exists():
        subprocess.run([args.qtool, "quantize", str(src), str(nf4), "--quiet"], check=True)
    size = nf4.stat().st_size
    best = None
    for _ in range(args.repeat):
        wall, rss, _ = run([args.qtool, "verify", str(nf4), "--quiet"], env)
        if best is None or wall < best[0]:
            best = (wall, rss)
    row = {"case": "verify .nf4 (integrity)", "input_bytes": size, "qtool_seconds": best[0], "qtool_gbps": size / best[0] / 1e9,
           "qtool_peak_rss": best[1], "target_gbps": 2.0, "meets_target": size / best[0] / 1e9 >= 2.0}
    table(f"{'case':26} {'size':>9} {'qtool s':>8} {'GB/s':>6} {'peak RSS':>9} {'≥ 2 GB/s':>9}",
          [f"{row['case']:26} {fmt_bytes(size):>9} {row['qtool_seconds']:8.3f} {row['qtool_gbps']:6.2f} "
           f"{fmt_bytes(row['qtool_peak_rss']):>9} {str(row['meets_target']):>9}"],
          "verify: qtool's NF4 (double quantization) of the 4.3 GB bf16 memory input; whole process, integrity checks only")
    return [row]


def make_memory_inputs(work):
    """About 4.3 GB of bf16: 32 Llama-named weights of 8192×8192 (134 MB each) and a norm,
    written by safetensors; an r=16 PEFT-format adapter (random factors) on every weight."""
    src, adapter = work / "memory-bf16-4GB.safetensors", work / "memory-adapter"
    if src.exists() and (adapter / "adapter_model.safetensors").exists():
        return src, adapter
    import numpy as np
    import torch
    from safetensors.torch import save_file
    torch.manual_seed(0)
    names = [f"model.layers.{i // 4}.mlp.proj_{i % 4}" for i in range(32)]
    tensors = {f"{n}.weight": torch.randn(8192, 8192).to(torch.bfloat16) for n in names}
    tensors["model.norm.weight"] = torch.ones(8192, dtype=torch.bfloat16)
    tmp = src.with_suffix(".tmp")
    save_file(tensors, tmp, metadata={"format": "pt"})
    tmp.rename(src)
    del tensors
    adapter.mkdir(exist_ok=True)
    factors = {}
    for n in names:
        factors[f"base_model.model.{n}.lora_A.weight"] = 0.01 * torch.randn(16, 8192)
        factors[f"base_model.model.{n}.lora_B.weight"] = 0.01 * torch.randn(8192, 16)
    save_file(factors, adapter / "adapter_model.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": ["proj_0", "proj_1", "proj_2", "proj_3"]}))
    return src, adapter


def memory_cases(args, work, env):
    """Peak RSS of every command and output format on the 4.3 GB input, against the bound of the
    largest tensor + 256 MB."""
    src, adapter = make_memory_inputs(work)
    q, b, h = work / "m.nf4", work / "m-bnb", work / "m.h5"
    cases = [
        ("quantize -> .nf4", [args.qtool, "quantize", str(src), str(q)], None),
        ("quantize -> bnb folder", [args.qtool, "quantize", str(src), str(b), "--format", "bnb"], None),
        ("dequantize .nf4 -> safetensors", [args.qtool, "dequantize", str(q), str(work / "m-deq.safetensors")], work / "m-deq.safetensors"),
        ("dequantize bnb -> folder", [args.qtool, "dequantize", str(b), str(work / "m-deq")], work / "m-deq"),
        ("convert -> sharded folder", [args.qtool, "convert", str(src), str(work / "m-sharded"), "--max-shard-size", "1GB"], work / "m-sharded"),
        ("convert --dtype f16 -> file", [args.qtool, "convert", str(src), str(work / "m-f16.safetensors"), "--dtype", "f16"], work / "m-f16.safetensors"),
        ("convert -> HDF5", [args.qtool, "convert", str(src), str(h)], None),
        ("convert HDF5 -> safetensors", [args.qtool, "convert", str(h), str(work / "m-from-h5.safetensors")], work / "m-from-h5.safetensors"),
        ("merge -> safetensors", [args.qtool, "merge", str(src), "--adapter", str(adapter), "-o", str(work / "m-merged")], work / "m-merged"),
        ("merge -> .nf4", [args.qtool, "merge", str(src), "--adapter", str(adapter), "-o", str(work / "m-merged.nf4")], work / "m-merged.nf4"),
        ("merge .nf4 -> .nf4", [args.qtool, "merge", str(q), "--adapter", str(adapter), "-o", str(work / "m-merged2.nf4")], work / "m-merged2.nf4"),
        ("merge bnb -> bnb", [args.qtool, "merge", str(b), "--adapter", str(adapter), "-o", str(work / "m-merged-bnb")], work / "m-merged-bnb"),
    ]
    rows = []
    for name, cmd, output in cases:
        wall, rss, _ = run(cmd + ["--quiet"], env)
        rows.append({"case": name, "seconds": wall, "peak_rss": rss})
        if output is not None:
            remove(output)
    remove(q, b, h)
    return rows, src.stat().st_size, 8192 * 8192 * 2


def memory_table(args, work, env):
    mrows, msize, largest = memory_cases(args, work, env)
    bound = largest + 256e6
    table(f"{'case':32} {'qtool s':>8} {'peak RSS':>9} {'within bound':>13}",
          [f"{r['case']:32} {r['seconds']:8.2f} {fmt_bytes(r['peak_rss']):>9} {str(r['peak_rss'] <= bound):>13}" for r in mrows],
          f"memory: {fmt_bytes(msize)} bf16 input (32 tensors of 8192×8192), r=16 adapter on each; "
          f"bound = largest tensor + 256 MB = {fmt_bytes(bound)}")
    return mrows


def table(header, lines, title=None):
    """Prints a table: an optional title line (after a blank line), the header, a rule, the lines."""
    if title:
        print()
        print(title)
    print(header)
    print("-" * len(header))
    for line in lines:
        print(line)


def fmt_bytes(n):
    return f"{n / 1e6:,.0f} MB"


def machine_report(args):
    """`qtool info --bench` at the top of the report, with the generic kernel's figure beside it
    (OPENBLAS_CORETYPE=Prescott, what Debian's OpenBLAS falls back to on CPUs it does not know)."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    info = subprocess.run([args.qtool, "info", "--bench"], capture_output=True, text=True, env=env, check=True).stdout
    print(info.rstrip())
    report = json.loads(subprocess.run([args.qtool, "info", "--bench", "--json"], capture_output=True, text=True, env=env,
                                       check=True).stdout)
    generic = json.loads(subprocess.run([args.qtool, "info", "--bench", "--json"], capture_output=True, text=True,
                                        env=dict(env, OPENBLAS_CORETYPE="Prescott"), check=True).stdout)
    own, base = report["blas"]["sgemm_gflops"], generic["blas"]["sgemm_gflops"]
    print(f"generic kernel (Prescott): {base['1']:.1f} GFLOP/s on 1 thread, {base['all']:.1f} on all; "
          f"kernel {report['blas']['kernel']}: {own['1'] / base['1']:.1f}× on 1 thread, {own['all'] / base['all']:.1f}× on all")
    print()
    return {"case": "machine", "info": report, "generic_sgemm_gflops": base}


EVAL_CONFIGS = {
    # SmolLM2-135M's shape, random weights.
    "135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 vocab_size=49152, tie_word_embeddings=True),
    "16M": dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8,
                vocab_size=4096, tie_word_embeddings=False),
}


def make_eval_inputs(work):
    """Random-weight Llama models of each config (float32, with the fixture tokenizer), their .nf4
    made by qtool later, and a JSON Lines file whose 8 lines each give at least 512 tokens."""
    script = """
import sys, json, torch, shutil
from transformers import LlamaConfig, LlamaForCausalLM
name, folder, fixtures = sys.argv[1], sys.argv[2], sys.argv[3]
torch.manual_seed(0)
config = LlamaConfig(max_position_embeddings=2048, rms_norm_eps=1e-5, **json.loads(sys.argv[4]))
LlamaForCausalLM(config).to(torch.float32).save_pretrained(folder)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(fixtures + "/models/llama-gqa/" + f, folder + "/" + f)
"""
    models = {}
    for name, config in EVAL_CONFIGS.items():
        folder = work / f"eval-{name}"
        if not (folder / "model.safetensors").exists():
            subprocess.run([PY, "-c", script, name, str(folder), str(ROOT / "fixtures"), json.dumps(config)], check=True,
                           capture_output=True)
        models[name] = folder
    data = work / "eval.jsonl"
    if not data.exists():
        text = (ROOT / "fixtures/text/corpus.txt").read_text()
        with open(data, "w") as f:
            for i in range(8):
                start = (i * 997) % max(1, len(text) - 4000)
                f.write(json.dumps({"text": text[start:start + 4000]}) + "\n")
    return models, data


def flops_per_token(config, length):
    """Multiply-adds ×2 of a forward pass per token: the linear layers, the head, and causal
    attention (scores and values over the keys up to each position: length/2 on average)."""
    d, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // heads
    linear = layers * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * i)
    attention = layers * heads * hd * length  # 2 products × length/2 keys
    return 2 * (linear + config["vocab_size"] * d + attention)


def finetune_flops_per_token(config, length, rank, checkpointing=False):
    """Multiply-adds ×2 of one QLoRA training step per token: the forward (flops_per_token); the
    backward through the frozen weights, which computes the input gradients only (the linear layers
    and the head once more, attention's two products twice each); the LoRA factors on the 7 linear
    layers of every block, forward 2·r·(in + out) per token and backward twice that; and with
    gradient checkpointing one more forward of the blocks (linear layers, attention and LoRA; not
    the head). The dequantization of the 4-bit weights, the norms, activations and optimizer are
    not counted."""
    d, i, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = d // heads
    linear = layers * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * i)
    attention = layers * heads * hd * length
    head = config["vocab_size"] * d
    # in + out of q, k, v, o, gate, up, down
    lora = layers * 2 * rank * ((d + heads * hd) + 2 * (d + kv * hd) + (heads * hd + d) + 3 * (d + i))
    forward = flops_per_token(config, length)
    backward = 2 * (linear + head + 2 * attention)
    recompute = 2 * (linear + attention) + lora if checkpointing else 0
    return forward + backward + 3 * lora + recompute


def eval_cases(args, work, env, peak):
    """qtool eval against transformers on the same lines at batch 4 × 512, from float32 and NF4."""
    models, data = make_eval_inputs(work)
    rows = []
    for name, folder in models.items():
        nf4 = work / f"eval-{name}.nf4"
        if not nf4.exists():
            run([args.qtool, "quantize", str(folder), str(nf4), "--quiet"], env)
        for kind, qmodel, pflags in (("f32", folder, []), ("nf4", nf4, ["--nf4"])):
            qcmd = [args.qtool, "eval", str(qmodel), "--data", str(data), "--max-seq-len", "512", "--batch-size", "4", "--json", "--quiet"]
            pcmd = [PY, str(ROOT / "Benchmarks/peer_eval.py"), str(folder), str(data), "--max-seq-len", "512", "--batch-size", "4"] + pflags
            best = {}
            for _ in range(args.repeat if name == "16M" else 1):
                for who, cmd in (("qtool", qcmd), ("peer", pcmd)):
                    wall, rss, out = run(cmd, env)
                    result = json.loads(out)
                    if who not in best or result["tokens_per_second"] > best[who]["tps"]:
                        best[who] = {"tps": result["tokens_per_second"], "rss": rss, "loss": result["loss"]}
            flops = flops_per_token(EVAL_CONFIGS[name], 512)
            rows.append({"case": f"eval {name} {kind}", "qtool_tokens_per_second": best["qtool"]["tps"], "qtool_peak_rss": best["qtool"]["rss"],
                         "peer_tokens_per_second": best["peer"]["tps"], "peer_peak_rss": best["peer"]["rss"],
                         "speedup": best["qtool"]["tps"] / best["peer"]["tps"],
                         "qtool_gflops": best["qtool"]["tps"] * flops / 1e9, "share_of_sgemm_peak": best["qtool"]["tps"] * flops / 1e9 / peak,
                         "qtool_loss": best["qtool"]["loss"], "peer_loss": best["peer"]["loss"]})
    return rows


def eval_table(args, work, env, machine):
    peak = machine["info"]["blas"]["sgemm_gflops"]["all"] or 1
    rows = eval_cases(args, work, env, peak)
    table(f"{'case':16} {'qtool tok/s':>11} {'peak RSS':>9} | {'peer tok/s':>10} {'peak RSS':>9} | {'× peer':>6} | {'GFLOP/s':>7} {'of peak':>7} | {'loss q':>8} {'loss p':>8}",
          [f"{r['case']:16} {r['qtool_tokens_per_second']:11.0f} {fmt_bytes(r['qtool_peak_rss']):>9} | {r['peer_tokens_per_second']:10.0f} "
           f"{fmt_bytes(r['peer_peak_rss']):>9} | {r['speedup']:6.2f} | {r['qtool_gflops']:7.1f} {r['share_of_sgemm_peak'] * 100:6.1f}% | "
           f"{r['qtool_loss']:8.4f} {r['peer_loss']:8.4f}" for r in rows],
          f"eval: random-weight Llama configs (135M: SmolLM2-135M's shape; 16M: 4 layers, hidden 512), 8 lines of 512 tokens "
          f"at batch 4; peer: transformers float32 (NF4: transformers + bitsandbytes, float32 compute) in process, load excluded; "
          f"of peak: qtool's GFLOP/s against `qtool info --bench`'s all-thread sgemm ({peak:.0f} GFLOP/s), kernel "
          f"{machine['info']['blas']['kernel']}")
    f32 = {r["case"].split()[1]: r for r in rows if r["case"].endswith("f32")}
    for r in rows:
        if r["case"].endswith("nf4"):
            size = r["case"].split()[1]
            print(f"{r['case']}: qtool peak RSS {fmt_bytes(r['qtool_peak_rss'])} = {r['qtool_peak_rss'] / f32[size]['peer_peak_rss'] * 100:.0f}% "
                  f"of transformers' from float32 ({fmt_bytes(f32[size]['peer_peak_rss'])})")
    return rows


FINETUNE_STEPS = {"135M": 8, "16M": 64}  # 30–60 s of training each for the peer here


def make_finetune_data(work):
    """A JSON Lines file of 16 lines of fixtures/text/corpus.txt, 1,000 characters each (at least
    443 tokens with the fixture tokenizer, so every line fills --seq-len 256 and no batch is padded)."""
    data = work / "finetune.jsonl"
    if not data.exists():
        text = (ROOT / "fixtures/text/corpus.txt").read_text()
        with open(data, "w") as f:
            for i in range(16):
                start = (i * 8999) % max(1, len(text) - 1000)
                f.write(json.dumps({"text": text[start:start + 1000]}) + "\n")
    return data


def has_finetune(args):
    """Whether this qtool has `finetune`: an unknown subcommand's --help prints the root help and
    exits 0, so the usage line is what tells."""
    p = subprocess.run([args.qtool, "finetune", "--help"], capture_output=True, text=True)
    return p.returncode == 0 and "qtool finetune" in p.stdout


def finetune_cases(args, work, env, peak):
    """qtool finetune (from the float32 folder, quantized to NF4 in memory) against transformers +
    PEFT + bitsandbytes QLoRA on the eval models, batch 4 × 256, r=16, alpha 32, lr 1e-4, file
    order; with and without gradient checkpointing on the 135M config. tokens/s is each one's own
    figure over its training steps (the peer's after one untimed warm-up step); peak RSS is the
    whole process's. The peer's includes what glibc's malloc keeps of the freed activations (its
    mmap threshold rises as big blocks are freed, so later ones come from the heap and stay):
    about 1.3 GB at 135M without checkpointing and 2.2 GB with (MALLOC_MMAP_THRESHOLD_=65536 gives
    3.3 and 2.1 GB but costs PyTorch a third of its speed or more, so the peer runs as it comes)."""
    models, _ = make_eval_inputs(work)
    data = make_finetune_data(work)
    qtool = has_finetune(args)
    if not qtool:
        print(f"note: {args.qtool} has no `finetune` command (its `finetune --help` gives no finetune usage): "
              f"the finetune table has the peer's figures only")
    output = work / "finetune-out"
    rows = []
    for name, checkpointing in (("135M", False), ("135M", True), ("16M", False)):
        folder, steps = models[name], FINETUNE_STEPS[name]
        flags = ["--grad-checkpointing"] if checkpointing else []
        qcmd = [args.qtool, "finetune", str(folder), "--data", str(data), "--output", str(output), "--steps", str(steps),
                "--batch-size", "4", "--seq-len", "256", "--rank", "16", "--alpha", "32", "--lr", "1e-4", "--no-shuffle",
                "--quiet", "--json"] + flags
        pcmd = [PY, str(ROOT / "Benchmarks/peer_finetune.py"), str(folder), str(data), "--steps", str(steps),
                "--batch-size", "4", "--seq-len", "256", "--rank", "16", "--alpha", "32"] + flags
        best = {}
        for _ in range(args.repeat if name == "16M" else 1):
            for who, cmd in (("qtool", qcmd), ("peer", pcmd)):
                if who == "qtool" and not qtool:
                    continue
                remove(output)
                wall, rss, out = run(cmd, env)
                result = json.loads(out)
                if who not in best or result["tokens_per_second"] > best[who]["tps"]:
                    best[who] = {"tps": result["tokens_per_second"], "rss": rss, "loss": result["loss"],
                                 "reported_rss": result.get("peak_rss_bytes")}
        remove(output)
        flops = finetune_flops_per_token(EVAL_CONFIGS[name], 256, 16, checkpointing)
        q, p = best.get("qtool"), best["peer"]
        rows.append({"case": f"finetune {name}" + (" ckpt" if checkpointing else ""), "steps": steps,
                     "flops_per_token": flops,
                     "qtool_tokens_per_second": q and q["tps"], "qtool_peak_rss": q and q["rss"],
                     "qtool_reported_peak_rss": q and q["reported_rss"],
                     "peer_tokens_per_second": p["tps"], "peer_peak_rss": p["rss"],
                     "speedup": q and q["tps"] / p["tps"],
                     "qtool_gflops": q and q["tps"] * flops / 1e9, "qtool_share_of_sgemm_peak": q and q["tps"] * flops / 1e9 / peak,
                     "peer_gflops": p["tps"] * flops / 1e9, "peer_share_of_sgemm_peak": p["tps"] * flops / 1e9 / peak,
                     "qtool_loss": q and q["loss"], "peer_loss": p["loss"]})
    return rows


def finetune_table(args, work, env, machine):
    peak = machine["info"]["blas"]["sgemm_gflops"]["all"] or 1
    rows = finetune_cases(args, work, env, peak)

    def cell(value, text, width):  # qtool's columns, "—" when this qtool has no finetune
        return f"{'—' if value is None else text(value):>{width}}"

    table(f"{'case':20} {'qtool tok/s':>11} {'peak RSS':>9} | {'peer tok/s':>10} {'peak RSS':>9} | {'× peer':>6} | "
          f"{'GFLOP/tok':>9} {'of peak q':>9} {'of peak p':>9}",
          [f"{r['case']:20} {cell(r['qtool_tokens_per_second'], lambda v: f'{v:.0f}', 11)} "
           f"{cell(r['qtool_peak_rss'], fmt_bytes, 9)} | {r['peer_tokens_per_second']:10.0f} {fmt_bytes(r['peer_peak_rss']):>9} | "
           f"{cell(r['speedup'], lambda v: f'{v:.2f}', 6)} | {r['flops_per_token'] / 1e9:9.3f} "
           f"{cell(r['qtool_share_of_sgemm_peak'], lambda v: f'{v * 100:.1f}%', 9)} {r['peer_share_of_sgemm_peak'] * 100:8.1f}%"
           for r in rows],
          f"finetune: QLoRA on the eval configs (NF4 with double quantization, float32 compute), r=16 alpha 32 on the 7 linear "
          f"layers of every block, AdamW lr 1e-4, batch 4 × 256 tokens, {FINETUNE_STEPS['135M']} steps (135M) and "
          f"{FINETUNE_STEPS['16M']} (16M), file order; ckpt: gradient checkpointing in both; qtool from the float32 folder, "
          f"quantized in memory; peer: transformers + PEFT + bitsandbytes in process, load and one warm-up step excluded; "
          f"GFLOP/tok: a training step's per token (forward, input gradients, LoRA; ckpt: the blocks' forward once more); "
          f"of peak: GFLOP/s against `qtool info --bench`'s all-thread sgemm ({peak:.0f} GFLOP/s)")
    plain = {r["case"].split()[1]: r for r in rows if not r["case"].endswith("ckpt")}
    for r in rows:
        if r["case"].endswith("ckpt"):
            base = plain[r["case"].split()[1]]
            for who in ("qtool", "peer"):
                if r[f"{who}_peak_rss"] is not None:
                    print(f"{r['case']}: {who} peak RSS {fmt_bytes(r[f'{who}_peak_rss'])} with checkpointing, "
                          f"{fmt_bytes(base[f'{who}_peak_rss'])} without; tokens/s {r[f'{who}_tokens_per_second'] / base[f'{who}_tokens_per_second'] * 100:.0f}% "
                          f"of the run without")
    return rows


def make_gguf_input(work):
    """A 1.08 GB bf16 Llama folder (hidden 2048, 12 layers, GQA 16/4 heads, random weights) with
    fixtures/models/llama-gqa's tokenizer (a SentencePiece-style vocabulary the converter takes
    without a pre-tokenizer hash)."""
    folder = work / "gguf-model"
    if (folder / "model.safetensors").exists():
        return folder
    import torch
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    hidden, inter, layers, heads, kv, vocab = 2048, 5632, 12, 16, 4, 512
    head_dim = hidden // heads
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
              "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
              "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
              "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "dtype": "bfloat16", "hidden_act": "silu"}
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "fixtures/models/llama-gqa" / name, folder / name)
    g = torch.Generator().manual_seed(0)
    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "lm_head.weight": w(vocab, hidden),
               "model.norm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        tensors.update({p + "self_attn.q_proj.weight": w(hidden, hidden), p + "self_attn.k_proj.weight": w(kv * head_dim, hidden),
                        p + "self_attn.v_proj.weight": w(kv * head_dim, hidden), p + "self_attn.o_proj.weight": w(hidden, hidden),
                        p + "mlp.gate_proj.weight": w(inter, hidden), p + "mlp.up_proj.weight": w(inter, hidden),
                        p + "mlp.down_proj.weight": w(hidden, inter),
                        p + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
                        p + "post_attention_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)})
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def gguf_table(args, work, env):
    """`qtool convert MODEL out.gguf --dtype q8_0` against llama.cpp's `convert_hf_to_gguf.py
    --outtype q8_0` (from the pinned llama-cpp-python sdist, as fixtures/generate/gguf_reference.py
    fetches it) on a 1.08 GB bf16 Llama: whole processes, best of --repeat; the outputs are compared
    tensor by tensor. Goal: at least 10× faster, at most a quarter of the peer's memory."""
    sys.path.insert(0, str(ROOT / "fixtures/generate"))
    import gguf_reference
    source = gguf_reference.llama_cpp()
    model = make_gguf_input(work)
    size = (model / "model.safetensors").stat().st_size
    mine, theirs = work / "q.gguf", work / "p.gguf"
    qcmd = [args.qtool, "convert", str(model), str(mine), "--dtype", "q8_0", "--quiet"]
    pcmd = [PY, "-c", gguf_reference.WRAPPER, "convert_hf_to_gguf.py", str(model), "--outtype", "q8_0", "--outfile", str(theirs)]
    penv = dict(env, LLAMA_CPP_DIR=str(source), FIXTURE_PRE_TOKENIZER="")
    best = {"qtool": None, "peer": None}
    for _ in range(args.repeat):
        for who, cmd, e in (("qtool", qcmd, env), ("peer", pcmd, penv)):
            remove(mine if who == "qtool" else theirs)
            wall, rss, _ = run(cmd, e)
            if best[who] is None or wall < best[who][0]:
                best[who] = (wall, rss)
    from gguf import GGUFReader
    a, b = GGUFReader(str(mine)), GGUFReader(str(theirs))
    same_tensors = [t.name for t in a.tensors] == [t.name for t in b.tensors] and all(
        x.tensor_type == y.tensor_type and x.data.tobytes() == y.data.tobytes() for x, y in zip(a.tensors, b.tensors))
    same_metadata = [k for k in a.fields] == [k for k in b.fields] and all(
        a.fields[k].contents() == b.fields[k].contents() for k in b.fields if k != "tokenizer.ggml.scores")
    q, p = best["qtool"], best["peer"]
    row = {"case": "convert to GGUF q8_0", "input_bytes": size, "qtool_seconds": q[0], "qtool_peak_rss": q[1],
           "peer_seconds": p[0], "peer_peak_rss": p[1], "speedup": p[0] / q[0], "memory_ratio": q[1] / p[1],
           "identical_tensors": same_tensors, "same_metadata_but_scores": same_metadata,
           "meets_speed_goal": p[0] / q[0] >= 10, "meets_memory_goal": q[1] <= p[1] / 4}
    table(f"{'case':22} {'qtool s':>8} {'peak RSS':>9} | {'peer s':>7} {'peak RSS':>9} | {'× peer':>6} {'RSS ratio':>9} "
          f"{'same tensors':>12} {'same metadata':>13}",
          [f"{row['case']:22} {q[0]:8.2f} {fmt_bytes(q[1]):>9} | {p[0]:7.2f} {fmt_bytes(p[1]):>9} | {row['speedup']:6.1f} "
           f"{row['memory_ratio']:9.3f} {str(same_tensors):>12} {str(same_metadata):>13}"],
          f"gguf: {fmt_bytes(size)} bf16 Llama (hidden 2048, 12 layers) to Q8_0; peer: llama.cpp's convert_hf_to_gguf.py "
          f"(llama-cpp-python {gguf_reference.VERSION}'s), whole processes; same metadata: all keys but "
          f"tokenizer.ggml.scores (qtool writes merge ranks); goal ≥ 10× faster, ≤ 1/4 of the peer's memory")
    # Memory of the other directions on the same model (each once), against the largest tensor
    # (as float32, what they hold at most) + 256 MB.
    largest = 5632 * 2048 * 4
    nf4, back, restored = work / "g.nf4", work / "g-back", work / "g.safetensors"
    subprocess.run([args.qtool, "quantize", str(model), str(nf4), "--quiet"], check=True)
    others = []
    for case, cmd in (("nf4 → GGUF (Q8_0)", [args.qtool, "convert", str(nf4), str(mine), "--quiet"]),
                      ("GGUF Q8_0 → transformers", [args.qtool, "convert", str(mine), str(back), "--quiet"]),
                      ("dequantize GGUF Q8_0", [args.qtool, "dequantize", str(mine), str(restored), "--quiet"])):
        wall, rss, _ = run(cmd, env)
        remove(back, restored)
        others.append({"case": case, "qtool_seconds": wall, "qtool_peak_rss": rss, "bound": largest + 256e6,
                       "within_bound": rss <= largest + 256e6})
    table(f"{'case':28} {'qtool s':>8} {'peak RSS':>9} {'bound':>9} {'within':>7}",
          [f"{o['case']:28} {o['qtool_seconds']:8.2f} {fmt_bytes(o['qtool_peak_rss']):>9} {fmt_bytes(o['bound']):>9} "
           f"{str(o['within_bound']):>7}" for o in others],
          "gguf memory: the other directions on the same model (bound: largest tensor as float32 + 256 MB)")
    remove(mine, theirs, nf4, back, restored)
    return [row] + others


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default="/dev/shm/qtool-bench", help="work folder (inputs and outputs)")
    parser.add_argument("--size-gb", type=float, default=1.07, help="size of the float32 input")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--qtool", default=str(ROOT / ".build/release/qtool"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--only", choices=["memory", "eval", "finetune", "tokenize", "verify", "gguf"], help="run one part only")
    args = parser.parse_args()

    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_report(args)
    if args.only == "memory":
        memory_table(args, work, dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        return
    if args.only == "eval":
        eval_table(args, work, dict(os.environ, OPENBLAS_NUM_THREADS="1"), machine)
        return
    if args.only == "finetune":
        rows = finetune_table(args, work, dict(os.environ, OPENBLAS_NUM_THREADS="1"), machine)
        if args.json:
            print(json.dumps([machine] + rows, indent=2))
        return
    if args.only == "verify":
        rows = verify_table(args, work, dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        if args.json:
            print(json.dumps([machine] + rows, indent=2))
        return
    if args.only == "gguf":
        rows = gguf_table(args, work, dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        if args.json:
            print(json.dumps([machine] + rows, indent=2))
        return
    if args.only == "tokenize":
        rows = tokenize_table(args, work, dict(os.environ, OPENBLAS_NUM_THREADS="1"))
        if args.json:
            print(json.dumps([machine] + rows, indent=2))
        return
    src = work / f"input-f32-{args.size_gb:g}GB.safetensors"
    make_input(src, args.size_gb)
    size = src.stat().st_size
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")

    cases = [
        ("convert (lossless)", [args.qtool, "convert", str(src), str(work / "q.safetensors"), "--quiet"],
         [PY, str(ROOT / "Benchmarks/peer_convert.py"), str(src), str(work / "p.safetensors")]),
        ("convert --dtype bf16", [args.qtool, "convert", str(src), str(work / "q.safetensors"), "--dtype", "bf16", "--quiet"],
         [PY, str(ROOT / "Benchmarks/peer_convert.py"), str(src), str(work / "p.safetensors"), "bf16"]),
    ]
    results = []
    for name, qcmd, pcmd in cases:
        q, p = best_of(args.repeat, qcmd, pcmd, env, (work / "q.safetensors", work / "p.safetensors"))
        run(qcmd, env)
        same = (work / "q.safetensors").read_bytes() == (work / "p.safetensors").read_bytes()
        results.append({"case": name, "input_bytes": size,
                        "qtool_seconds": q["wall"], "qtool_gbps": size / q["wall"] / 1e9, "qtool_peak_rss": q["rss"],
                        "peer_seconds": p["wall"], "peer_inprocess_seconds": p["inproc"],
                        "peer_gbps": size / p["inproc"] / 1e9, "peer_peak_rss": p["rss"],
                        "speedup_vs_peer_inprocess": p["inproc"] / q["wall"], "speedup_vs_peer_process": p["wall"] / q["wall"],
                        "identical_output": same})
        for f in ("q.safetensors", "p.safetensors"):
            (work / f).unlink(missing_ok=True)

    print(f"qtool bench — {platform.machine()}, {os.cpu_count()} cores, work folder {work}, input {fmt_bytes(size)} float32")
    print("peer: Python safetensors.torch load_file (+ .to(dtype)) + save_file; GB/s of the peer counts its "
          "in-process time only (imports excluded), qtool's is the whole process")
    table((f"{'case':22} {'qtool s':>8} {'GB/s':>6} {'peak RSS':>9} | {'peer s':>7} {'GB/s':>6} {'process s':>9} "
           f"{'peak RSS':>9} | {'× peer':>6} {'× process':>9} {'same bytes':>10}"),
          [f"{r['case']:22} {r['qtool_seconds']:8.3f} {r['qtool_gbps']:6.2f} {fmt_bytes(r['qtool_peak_rss']):>9} | "
           f"{r['peer_inprocess_seconds']:7.3f} {r['peer_gbps']:6.2f} {r['peer_seconds']:9.3f} {fmt_bytes(r['peer_peak_rss']):>9} | "
           f"{r['speedup_vs_peer_inprocess']:6.2f} {r['speedup_vs_peer_process']:9.2f} {str(r['identical_output']):>10}" for r in results])
    print("× peer: peer in-process seconds / qtool whole-process seconds; × process: both whole processes")

    qrows, qsize = quantize_cases(args, work, env)
    table(f"{'case':26} {'qtool s':>8} {'Mparam/s':>9} {'peak RSS':>9} | {'bnb s':>7} {'Mparam/s':>9} | {'× bnb':>6} | {'I/O floor s':>11} {'× floor':>7}",
          [f"{r['case']:26} {r['qtool_seconds']:8.3f} {r['qtool_mparams_per_s']:9.0f} {fmt_bytes(r['qtool_peak_rss']):>9} | "
           f"{r['peer_seconds']:7.3f} {r['peer_mparams_per_s']:9.0f} | {r['speedup']:6.1f} | {r['io_floor_seconds']:11.3f} "
           f"{r['over_io_floor']:7.2f}" for r in qrows],
          f"quantize/dequantize: {qrows[0]['parameters'] / 1e6:.0f} M parameters, bf16 input of {fmt_bytes(qsize)}, "
          f"largest tensor 8 MB; peer: bitsandbytes quantize_4bit / dequantize_4bit in process on the loaded tensors; "
          f"I/O floor: `cat input >/dev/null; head -c OUTPUT_SIZE ... >out` as one process")
    m = merge_case(args, work, env)
    table(f"{'case':22} {'qtool s':>8} {'peak RSS':>9} | {'peer s':>7} {'in-proc s':>9} {'peak RSS':>9} | {'× process':>9} {'× in-proc':>9}",
          [f"{m['case']:22} {m['qtool_seconds']:8.3f} {fmt_bytes(m['qtool_peak_rss']):>9} | {m['peer_seconds']:7.3f} "
           f"{m['peer_inprocess_seconds']:9.3f} {fmt_bytes(m['peer_peak_rss']):>9} | {m['speedup_vs_peer_process']:9.1f} "
           f"{m['speedup_vs_peer_inprocess']:9.1f}"],
          f"merge: {fmt_bytes(m['input_bytes'])} bf16 Llama in {fmt_bytes(m['largest_shard'])} shards, r=16 PEFT adapter "
          f"on every linear layer; peer: transformers + PEFT load, merge_and_unload, save_pretrained")
    print(f"RSS bound for merge (largest shard + 256 MB): {fmt_bytes(m['largest_shard'] + 256e6)}")
    print(f"merge on the kernel qtool chooses: {m['qtool_own_kernel_seconds']:.3f} s; on the generic kernel "
          f"(OPENBLAS_CORETYPE=Prescott): {m['qtool_generic_kernel_seconds']:.3f} s; "
          f"{m['qtool_generic_kernel_seconds'] / m['qtool_own_kernel_seconds']:.2f}× faster")
    h = hdf5_case(args, work, env)
    table(f"{'case':22} {'qtool s':>8} {'GB/s':>6} {'peak RSS':>9} | {'peer s':>7} {'GB/s':>6} {'process s':>9} {'peak RSS':>9} | {'× peer':>6} {'× process':>9}",
          [f"{h['case']:22} {h['qtool_seconds']:8.3f} {h['qtool_gbps']:6.2f} {fmt_bytes(h['qtool_peak_rss']):>9} | "
           f"{h['peer_inprocess_seconds']:7.3f} {h['peer_gbps']:6.2f} {h['peer_seconds']:9.3f} {fmt_bytes(h['peer_peak_rss']):>9} | "
           f"{h['speedup_vs_peer_inprocess']:6.2f} {h['speedup_vs_peer_process']:9.2f}"],
          f"hdf5: {fmt_bytes(h['input_bytes'])} of float32 datasets written by h5py; peer: h5py reads every dataset, "
          f"safetensors save_file writes them")
    grows = gguf_table(args, work, env)
    trows = tokenize_table(args, work, env)
    erows = eval_table(args, work, env, machine)
    frows = finetune_table(args, work, env, machine)
    mrows = memory_table(args, work, env)
    vrows = verify_table(args, work, env)
    if args.json:
        print(json.dumps([machine] + results + qrows + [m, h] + grows + trows + erows + frows + mrows + vrows, indent=2))


if __name__ == "__main__":
    main()
