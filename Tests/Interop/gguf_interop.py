"""`make interop` (GGUF part): gguf-py and llama.cpp read the GGUF files qtool writes, and qtool reads
the ones llama.cpp writes.

Runs the built qtool on the bundled fixtures and checks, each in a function below:

  a. gguf-py (the venv's pinned `gguf`) opens every GGUF qtool writes (five models in five types,
     LoRA / rsLoRA adapters, a merge, a 4-bit source) and dequantizes every tensor; `qtool dequantize`
     gives gguf-py's values bit for bit.
  b. llama.cpp's own converters (convert_hf_to_gguf.py / convert_lora_to_gguf.py of the pinned
     llama-cpp-python sdist, run through fixtures/generate/gguf_reference.py's wrapper) write the same
     tensors and metadata, except `tokenizer.ggml.scores` of SentencePiece-style vocabularies (qtool:
     merge ranks; the converter: -1000 for all, with which llama.cpp tokenizes unlike transformers).
  c. llama.cpp loads qtool's files and generates greedily as transformers (and PEFT, for adapters) do.
  d. llama-tokenize on qtool's GGUF gives the ids of fixtures/tokenizers/goldens.json (transformers'),
     every difference put down to something GGUF cannot say.
  e. llama-perplexity on qtool's GGUFs against `qtool eval --text --ctx` (within 1%).
  f. GGUFs from the wild: llama-quantize's K-quants and legacy types, dequantized by qtool as gguf-py
     does, listed by `qtool inspect`, converted back to transformers and evaluated.

Needs the venv and llama.cpp's binaries: LLAMA_CPP_BIN (llama-tokenize, llama-perplexity,
llama-quantize; default .cache/llama.cpp-build/bin, made by `make llama-cpp`) and LLAMA_GREEDY_IDS
(Tests/Interop/llama_greedy_ids.cpp built; default $LLAMA_CPP_BIN/llama-greedy-ids). QTOOL overrides
the binary (default .build/release/qtool). Prints a table; exits 1 when a check fails.

    gguf_interop.py                 every check
    gguf_interop.py --only c,e      some of them (a's files are made whenever they are needed)
    gguf_interop.py --keep          leave the temporary folder in place
"""
import argparse
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures/generate"))

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

import gguf_reference  # noqa: E402

warnings.filterwarnings("ignore")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(2)

FIX = ROOT / "fixtures"
QTOOL = os.environ.get("QTOOL") or str(ROOT / ".build/release/qtool")
LLAMA_BIN = Path(os.environ.get("LLAMA_CPP_BIN") or ROOT / ".cache/llama.cpp-build/bin")
GREEDY = os.environ.get("LLAMA_GREEDY_IDS") or str(LLAMA_BIN / "llama-greedy-ids")
PPL_TEXT = FIX / "models/ppl.txt"
GGUF_PY = "0.17.1"
THREADS = "2"
CTX = 64
PPL_TOLERANCE = 0.01

# fixture folder → the pre-tokenizer gguf_reference.py names for the converter (byte-level only)
PRE_TOKENIZER = {folder: pre for folder, _, _, pre in gguf_reference.MODELS}
MODELS = ["models/llama-gqa", "models/qwen2-tied", "tiny-llama", "models/mistral", "models/llama3-rope"]
DTYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
CONVERTER_DTYPES = ["f32", "f16", "bf16", "q8_0"]  # what convert_hf_to_gguf.py writes of these
TOKENIZERS = ["gpt2-bytelevel", "llama3-bytelevel", "qwen2-bytelevel", "llama2-metaspace", "llama2-legacy",
              "llama2-metaspace-split", "tiny-llama"]
REFUSED_TOKENIZERS = ["qwen35-bytelevel", "gpt2-prefix-space"]
PROMPT = "The library returns the value of the"
WILD_TYPES = ["Q4_K_M", "Q6_K", "Q5_K_M", "Q4_0", "Q8_0", "Q2_K", "Q3_K_M"]


def short(folder):
    return Path(folder).name


# ---------------------------------------------------------------- results


class Results:
    def __init__(self):
        self.rows = []

    def add(self, section, check, ok, detail=""):
        """ok: True (pass), False (fail), None (reported, not judged)."""
        self.rows.append((section, check, ok, detail))
        mark = {True: "ok  ", False: "FAIL", None: "info"}[ok]
        print(f"  {mark} {check}: {detail}", flush=True)
        return ok

    @property
    def failures(self):
        return sum(1 for row in self.rows if row[2] is False)

    def table(self):
        width = max(len(row[1]) for row in self.rows)
        line = "-" * (width + 60)
        print(f"\n{line}\n{'':2}{'check':{width}}  result  details\n{line}")
        section = None
        for name, check, ok, detail in self.rows:
            if name != section:
                section = name
                print(f"{name}")
            mark = {True: "ok", False: "FAIL", None: "info"}[ok]
            print(f"  {check:{width}}  {mark:6}  {detail}")
        print(line)
        passed = sum(1 for row in self.rows if row[2] is True)
        print(f"{passed} passed, {self.failures} failed, {sum(1 for row in self.rows if row[2] is None)} reported")


R = Results()


# ---------------------------------------------------------------- running tools


def run(args, check=True):
    # Through files, not pipes: llama.cpp's log thread loses the last lines (llama-perplexity's
    # "Final estimate") when stderr is a pipe the process exits on.
    with tempfile.TemporaryFile("w+", errors="replace") as out, tempfile.TemporaryFile("w+", errors="replace") as err:
        code = subprocess.run([str(a) for a in args], stdout=out, stderr=err).returncode
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, code, out.read(), err.read())
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return result


def qtool(*args, check=True):
    return run([QTOOL, *args], check=check)


def llama_tokenize(model, text, work, parse_special=True):
    """llama-tokenize's ids for a text, as transformers' add_special_tokens=True encodes it: the text
    from a file read as it is (--no-escape: no \\n processing), BOS/EOS as the GGUF asks, special
    tokens parsed (llama-tokenize's default; --no-parse-special as llama-perplexity reads its file)."""
    descriptor, name = tempfile.mkstemp(dir=work, suffix=".txt")
    os.close(descriptor)
    path = Path(name)
    path.write_bytes(text.encode())
    args = [LLAMA_BIN / "llama-tokenize", "-m", model, "-f", path, "--no-escape", "--ids", "--log-disable"]
    if not parse_special:
        args.append("--no-parse-special")
    out = run(args).stdout.strip().splitlines()
    path.unlink()
    return json.loads(out[-1]) if out else []


def llama_perplexity(model, lora=None):
    args = [LLAMA_BIN / "llama-perplexity", "-m", model, "-f", PPL_TEXT, "-c", CTX, "-b", CTX, "-t", THREADS]
    if lora:
        args += ["--lora", lora]
    for _ in range(3):
        result = run(args)
        text = result.stdout + "\n" + result.stderr
        chunks = re.search(r"calculating perplexity over (\d+) chunks", text)
        ppl = re.search(r"Final estimate: PPL = ([0-9.]+)", text)
        if chunks and not ppl:
            # the running figure after the last chunk ("[21]714.7053,") is the final estimate
            ppl = re.search(rf"\[{chunks.group(1)}\]([0-9.]+),", text)
        if ppl and chunks:
            return float(ppl.group(1)), int(chunks.group(1))
        # llama.cpp's log thread now and then loses the last lines at exit: run it again
    raise RuntimeError(f"{' '.join(map(str, args))}: no final estimate in\n{text[-1500:]}")


def qtool_eval(model, adapter=None):
    args = ["eval", model, "--text", PPL_TEXT, "--ctx", str(CTX), "--json", "--quiet"]
    if adapter:
        args += ["--adapter", adapter]
    return json.loads(qtool(*args).stdout)


def greedy_llama(model, ids, n=16, lora=None):
    args = [GREEDY, "-m", model, "--ids", ",".join(map(str, ids)), "-n", n, "--ignore-eos"]  # 2 threads
    if lora:
        args += ["--lora", lora]
    for line in run(args).stdout.splitlines():
        if line.startswith("generated_ids:"):
            return [int(x) for x in line.split()[1:]]
    raise RuntimeError("llama-greedy-ids printed no generated_ids")


def greedy_hf(model, ids, n=16):
    """transformers' generate(do_sample=False) for n tokens: with eos_token_id=None nothing stops it,
    as --ignore-eos does not stop llama-greedy-ids; neither suppresses EOS (min_new_tokens would, and
    then differ from llama.cpp where EOS is the argmax)."""
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             eos_token_id=None)
    return out[0, len(ids):].tolist()


def load_hf(folder, adapter=None):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    if adapter:
        model = PeftModel.from_pretrained(model, adapter)
    return model.eval()


def rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- files qtool writes (made once)


class Files:
    """Every GGUF qtool writes for these checks, under work/qtool."""

    def __init__(self, work):
        self.dir = work / "qtool"
        self.dir.mkdir()
        self.models = {}  # (folder, dtype) → path
        self.adapters = {}  # name → path
        for folder in MODELS:
            for dtype in DTYPES:
                path = self.dir / f"{short(folder)}-{dtype}.gguf"
                qtool("convert", FIX / folder, path, "--dtype", dtype, "--quiet")
                self.models[folder, dtype] = path
        for name, adapter, dtype in (("lora-f32", "llama-gqa-lora", "f32"), ("lora-f16", "llama-gqa-lora", "f16"),
                                     ("rslora-f32", "llama-gqa-rslora", "f32")):
            path = self.dir / f"{adapter}-{dtype}.gguf"
            qtool("convert", FIX / "models" / adapter, path, "--base", FIX / "models/llama-gqa", "--dtype", dtype, "--quiet")
            self.adapters[name] = path
        self.merged = self.dir / "llama-gqa+lora.gguf"
        qtool("merge", FIX / "models/llama-gqa", "--adapter", FIX / "models/llama-gqa-lora", "-o", self.merged, "--quiet")
        self.merged_folder = self.dir / "llama-gqa+lora"
        qtool("merge", FIX / "models/llama-gqa", "--adapter", FIX / "models/llama-gqa-lora", "-o", self.merged_folder,
              "--quiet")
        self.nf4 = self.dir / "llama-gqa-bnb-nf4.gguf"
        qtool("convert", FIX / "models/llama-gqa-bnb-nf4", self.nf4, "--quiet")


# ---------------------------------------------------------------- a. gguf-py reads everything


def gguf_py_dequantized(path):
    """name → (gguf type name, float32 values in torch order) by gguf-py's reader and dequantize."""
    reader = gguf.GGUFReader(path)
    out = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32, copy=False)
        shape = [int(d) for d in reversed(tensor.shape)]
        if values.size != int(tensor.n_elements):
            raise ValueError(f"{tensor.name}: {values.size} values for {shape}")
        out[tensor.name] = (tensor.tensor_type.name, values.reshape(shape))
    return reader, out


def compare_dequantize(path, work, expected):
    """`qtool dequantize --dtype f32` of a GGUF against gguf-py: the same names, shapes and float32 bits."""
    output = work / (path.stem + ".dequantized.safetensors")
    qtool("dequantize", path, output, "--dtype", "f32", "--quiet")
    mine = load_file(output)
    output.unlink()
    problems = []
    if set(mine) != set(expected):
        problems.append(f"names differ: {sorted(set(mine) ^ set(expected))[:4]}")
    for name, (_, values) in expected.items():
        ours = mine.get(name)
        if ours is None:
            continue
        if ours.dtype != np.float32 or ours.shape != values.shape:
            problems.append(f"{name}: {ours.dtype} {list(ours.shape)} vs float32 {list(values.shape)}")
        elif not np.array_equal(ours.view(np.uint32), values.view(np.uint32)):
            problems.append(f"{name}: {int((ours.view(np.uint32) != values.view(np.uint32)).sum())} values differ")
    return problems


def check_a(files, work):
    print("a. gguf-py reads every GGUF qtool writes", flush=True)
    for (folder, dtype), path in files.models.items():
        try:
            reader, tensors = gguf_py_dequantized(path)
        except Exception as error:  # noqa: BLE001
            R.add("a. gguf-py reads qtool's GGUFs", f"{short(folder)} {dtype}", False, f"gguf-py: {error}")
            continue
        types = sorted({t for t, _ in tensors.values()})
        finite = all(np.isfinite(v).all() for _, v in tensors.values())
        detail = f"{len(tensors)} tensors ({', '.join(types)}) dequantized"
        problems = compare_dequantize(path, work, tensors)
        R.add("a. gguf-py reads qtool's GGUFs", f"{short(folder)} {dtype}", finite and not problems,
              detail + ("; qtool dequantize = gguf-py bit for bit" if not problems else "; " + "; ".join(problems[:3])))
    for name, path in files.adapters.items():
        reader, tensors = gguf_py_dequantized(path)
        kind = reader.get_field("adapter.type").contents()
        alpha = reader.get_field("adapter.lora.alpha").contents()
        types = sorted({t for t, _ in tensors.values()})
        pairs = sum(1 for n in tensors if n.endswith(".lora_a"))
        R.add("a. gguf-py reads qtool's GGUFs", f"adapter {path.stem}", kind == "lora" and pairs * 2 == len(tensors),
              f"adapter.type={kind}, alpha={alpha:g}, {pairs} lora_a/lora_b pairs ({', '.join(types)})")
    for label, path in (("merge llama-gqa + lora", files.merged), ("4-bit source llama-gqa-bnb-nf4", files.nf4)):
        reader, tensors = gguf_py_dequantized(path)
        types = sorted({t for t, _ in tensors.values()})
        problems = compare_dequantize(path, work, tensors)
        R.add("a. gguf-py reads qtool's GGUFs", label, not problems,
              f"{len(tensors)} tensors ({', '.join(types)})" + ("; qtool dequantize = gguf-py bit for bit" if not problems else "")
              + ("; " + "; ".join(problems[:3]) if problems else ""))


# ---------------------------------------------------------------- b. llama.cpp's converters


def gguf_differences(mine, theirs):
    """Metadata keys (in order, with types and values) and tensors (name, type, shape, offset, bytes)
    of two GGUF files that differ."""
    a, b = gguf.GGUFReader(mine), gguf.GGUFReader(theirs)
    keys_a, keys_b = list(a.fields), list(b.fields)
    different = []
    if keys_a != keys_b:
        different.append(f"key order/set ({sorted(set(keys_a) ^ set(keys_b))[:4]})")
    for key in keys_b:
        if key in a.fields and [p.tobytes() for p in a.fields[key].parts] != [p.tobytes() for p in b.fields[key].parts]:
            different.append(key)
    tensors_a = {t.name: t for t in a.tensors}
    if [t.name for t in a.tensors] != [t.name for t in b.tensors]:
        different.append("tensor order/set")
    for t in b.tensors:
        o = tensors_a.get(t.name)
        if o is None:
            continue
        if (o.tensor_type != t.tensor_type or list(o.shape) != list(t.shape) or o.data_offset - a.data_offset
                != t.data_offset - b.data_offset or o.data.tobytes() != t.data.tobytes()):
            different.append(f"tensor {t.name} ({o.tensor_type.name} vs {t.tensor_type.name})")
    return different


def convert_with_llama_cpp(jobs):
    """Runs llama.cpp's converters (through gguf_reference's wrapper), two at a time."""
    source = gguf_reference.llama_cpp()

    def one(job):
        script, args, pre = job
        gguf_reference.run(source, script, [str(a) for a in args], pre)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, jobs))


def check_b(files, work):
    print("b. llama.cpp's converters write the same files", flush=True)
    out = work / "converter"
    out.mkdir()
    jobs, pairs = [], []
    for folder in MODELS:
        for dtype in CONVERTER_DTYPES:
            path = out / f"{short(folder)}-{dtype}.gguf"
            jobs.append(("convert_hf_to_gguf.py", [FIX / folder, "--outtype", dtype, "--outfile", path],
                         PRE_TOKENIZER.get(folder)))
            pairs.append((f"{short(folder)} {dtype}", files.models[folder, dtype], path))
    for name, dtype in (("lora-f32", "f32"), ("lora-f16", "f16"), ("rslora-f32", "f32")):
        adapter = "llama-gqa-rslora" if name.startswith("rslora") else "llama-gqa-lora"
        path = out / f"{adapter}-{dtype}.gguf"
        jobs.append(("convert_lora_to_gguf.py", [FIX / "models" / adapter, "--base", FIX / "models/llama-gqa", "--outtype",
                                                 dtype, "--outfile", path], None))
        pairs.append((f"adapter {adapter} {dtype}", files.adapters[name], path))
    started = time.time()
    convert_with_llama_cpp(jobs)
    print(f"  ({len(jobs)} conversions by llama.cpp's scripts in {time.time() - started:.0f} s)", flush=True)
    for label, mine, theirs in pairs:
        identical = mine.read_bytes() == theirs.read_bytes()
        if identical:
            R.add("b. = llama.cpp's converters", label, True, "byte-identical file")
            continue
        different = gguf_differences(mine, theirs)
        if label.startswith("adapter llama-gqa-rslora"):
            R.add("b. = llama.cpp's converters", label, *check_rslora(mine, theirs, different))
            continue
        model = gguf.GGUFReader(theirs).get_field("tokenizer.ggml.model").contents()
        ok = different == ["tokenizer.ggml.scores"] and model == "llama"
        R.add("b. = llama.cpp's converters", label, ok,
              "every tensor byte-identical, metadata equal but tokenizer.ggml.scores (SentencePiece vocabulary: "
              "qtool merge ranks, converter -1000)" if ok else f"differ: {different[:6]}")
    tokenization_with_converter_scores(files, out / "llama-gqa-f32.gguf", work)


def check_rslora(mine, theirs, different):
    """convert_lora_to_gguf.py ignores use_rslora (llama.cpp scales by alpha/r); qtool folds PEFT's
    alpha/√r into B: its lora_b are the converter's × √r, everything else equal."""
    config = json.loads((FIX / "models/llama-gqa-rslora/adapter_config.json").read_text())
    factor = np.sqrt(config["r"])
    a, b = gguf.GGUFReader(mine), gguf.GGUFReader(theirs)
    theirs_b = {t.name: t for t in b.tensors}
    lora_b = [t for t in a.tensors if t.name.endswith(".lora_b")]
    worst = max(float(np.max(np.abs(t.data.astype(np.float64) - theirs_b[t.name].data.astype(np.float64) * factor)
                             / (np.abs(theirs_b[t.name].data.astype(np.float64) * factor) + 1e-30))) for t in lora_b)
    others = [d for d in different if not (d.startswith("tensor ") and ".lora_b" in d)]
    ok = not others and worst < 1e-6
    return ok, (f"converter ignores use_rslora; qtool's {len(lora_b)} lora_b = converter's × √r={factor:.4f} "
                f"(max rel. diff {worst:.1e}), all else equal" if ok else f"differ: {others[:6]}, lora_b rel. diff {worst:.1e}")


def tokenization_with_converter_scores(files, converter_gguf, work):
    """The converter's -1000 scores make llama.cpp merge pairs in no useful order; qtool's merge ranks
    tokenize as transformers does. Over the sentences of ppl.txt, and one shown."""
    tokenizer = AutoTokenizer.from_pretrained(FIX / "models/llama-gqa")
    text = PPL_TEXT.read_text()
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    mine_bad, theirs_bad, shown = 0, 0, None
    for sentence in sentences:
        hf = tokenizer(sentence)["input_ids"]
        ours = llama_tokenize(files.models["models/llama-gqa", "f32"], sentence, work)
        theirs = llama_tokenize(converter_gguf, sentence, work)
        mine_bad += ours != hf
        theirs_bad += theirs != hf
        if theirs != hf and ours == hf and (shown is None or len(sentence) < len(shown[0])):
            shown = (sentence, hf, theirs)
    R.add("b. = llama.cpp's converters", "llama-gqa tokenization, scores", mine_bad == 0,
          f"llama-tokenize = transformers on the {len(sentences)} sentences of ppl.txt: qtool's GGUF "
          f"{len(sentences) - mine_bad}/{len(sentences)}, the converter's {len(sentences) - theirs_bad}/{len(sentences)}")
    if shown:
        sentence, hf, theirs = shown
        start = max(0, next(i for i, (x, y) in enumerate(zip(hf + [-1], theirs + [-2])) if x != y) - 2)

        def pieces(ids):
            return ("… " if start else "") + " ".join(tokenizer.convert_ids_to_tokens(ids[start:start + 6])) + \
                (" …" if len(ids) > start + 6 else "")
        R.add("b. = llama.cpp's converters", "  e.g.", None,
              f"{sentence[-40:]!r}: transformers and qtool's GGUF [{pieces(hf)}], the converter's [{pieces(theirs)}]")


# ---------------------------------------------------------------- c. generation


def check_c(files, work):
    print("c. llama.cpp generates with qtool's GGUFs as transformers does", flush=True)
    for folder in MODELS:
        tokenizer = AutoTokenizer.from_pretrained(FIX / folder)
        ids = tokenizer(PROMPT)["input_ids"][:8]
        model = load_hf(FIX / folder)
        hf = greedy_hf(model, ids)
        f32 = greedy_llama(files.models[folder, "f32"], ids)
        R.add("c. greedy generation", f"{short(folder)} f32", f32 == hf,
              f"prompt {ids}: 16/16 ids equal {hf}" if f32 == hf else f"transformers {hf} vs llama.cpp {f32}")
        f16 = greedy_llama(files.models[folder, "f16"], ids)
        same = sum(x == y for x, y in zip(f16, hf))
        prefix = next((i for i, (x, y) in enumerate(zip(f16, hf)) if x != y), len(hf))
        R.add("c. greedy generation", f"{short(folder)} f16", same >= 12,
              f"{same}/16 ids equal transformers' (f32) ids, first {prefix} in a row")
    base = FIX / "models/llama-gqa"
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = tokenizer(PROMPT)["input_ids"][:8]
    for name, adapter in (("lora-f32", "llama-gqa-lora"), ("rslora-f32", "llama-gqa-rslora")):
        hf = greedy_hf(load_hf(base, FIX / "models" / adapter), ids)
        ours = greedy_llama(files.models["models/llama-gqa", "f32"], ids, lora=files.adapters[name])
        plain = greedy_llama(files.models["models/llama-gqa", "f32"], ids)
        R.add("c. greedy generation", f"llama-gqa + {adapter} (--lora) f32", ours == hf,
              (f"16/16 ids equal PEFT's {hf}" if ours == hf else f"PEFT {hf} vs llama.cpp {ours}")
              + f" ({sum(x != y for x, y in zip(plain, hf))}/16 differ without the adapter)")


# ---------------------------------------------------------------- d. tokenization


def tiny_model(name, folder, out):
    """A random one-layer Llama whose vocabulary fits the tokenizer, saved with its tokenizer files."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=(len(tokenizer) + 63) // 64 * 64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(out)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(folder / file, out / file)
    return out


def explanations(text, spec):
    """The categories of difference that apply to a text under a tokenizer.json."""
    found = set()
    added = spec["added_tokens"]
    if any(t["lstrip"] or t["rstrip"] or t["single_word"] for t in added if t["content"] in text and text):
        found.add(1)
    normalizers = [spec["normalizer"]] if spec["normalizer"] else []
    while any(n.get("type") == "Sequence" for n in normalizers):
        normalizers = [m for n in normalizers for m in (n["normalizers"] if n.get("type") == "Sequence" else [n])]
    if any(n["type"] == "NFC" for n in normalizers) and unicodedata.normalize("NFC", text) != text:
        found.add(2)
    pre = spec["pre_tokenizer"] or {}
    if pre.get("type") == "Metaspace" and pre.get("prepend_scheme") in ("first", "always"):
        contents = sorted((t["content"] for t in added), key=len, reverse=True)
        segments = re.split("|".join(map(re.escape, contents)), text) if contents else [text]
        # transformers prepends "▁" to a segment unless it starts with one (a space); llama.cpp's SPM
        # always does, at the start and after every added token (with "first", transformers only at
        # the start of the text)
        if segments[0].startswith(" "):
            found.add(3)
        for segment in segments[1:]:
            if segment and (pre["prepend_scheme"] == "first" or segment.startswith(" ")):
                found.add(3)
    if normalizers and any(t["normalized"] and not t["special"] and t["content"] in text for t in added):
        found.add(4)
    return found


CATEGORIES = {
    1: "added token with lstrip/rstrip/single_word",
    2: "not NFC, NFC normalizer",
    3: "Metaspace: leading space / text after a special token",
    4: "normalized added token under a normalizer",
}


def check_d(files, work):
    print("d. llama-tokenize on qtool's GGUFs = transformers (fixtures/tokenizers/goldens.json)", flush=True)
    goldens = json.loads((FIX / "tokenizers/goldens.json").read_text())["tokenizers"]
    out = work / "tokenizers"
    out.mkdir()
    totals = {c: 0 for c in CATEGORIES}
    for name in TOKENIZERS:
        golden = goldens[name]
        folder = FIX / golden["path"]
        model = folder if name == "tiny-llama" else tiny_model(name, folder, out / name)
        path = out / f"{name}.gguf"
        qtool("convert", model, path, "--dtype", "f32", "--quiet")
        spec = json.loads((folder / "tokenizer.json").read_text())
        equal, counts, unexplained = 0, {c: 0 for c in CATEGORIES}, []
        for case in golden["cases"]:
            ids = llama_tokenize(path, case["text"], work)
            if ids == case["ids"]:
                equal += 1
                continue
            found = explanations(case["text"], spec)
            if found == {2}:
                # confirmed: llama.cpp does not normalize; the NFC text gives transformers' ids
                nfc = llama_tokenize(path, unicodedata.normalize("NFC", case["text"]), work)
                if nfc != case["ids"]:
                    found = set()
            for c in found:
                counts[c] += 1
                totals[c] += 1
            if not found:
                unexplained.append(case["name"])
            print(f"       {case['name']} {sorted(found) or 'UNEXPLAINED'}: {case['text'][:50]!r}", flush=True)
        cases = len(golden["cases"])
        detail = f"{equal}/{cases} equal"
        if equal < cases:
            detail += "; differences: " + ", ".join(f"({c}) {n}" for c, n in counts.items() if n)
        if unexplained:
            detail += f"; UNEXPLAINED: {unexplained}"
        R.add("d. tokenization", name, not unexplained, detail)
    R.add("d. tokenization", "categories", None,
          "; ".join(f"({c}) {CATEGORIES[c]}: {totals[c]}" for c in CATEGORIES) + " (a text may be in several)")
    for name in REFUSED_TOKENIZERS:
        model = tiny_model(name, FIX / goldens[name]["path"], out / name)
        result = qtool("convert", model, out / f"{name}.gguf", "--dtype", "f32", check=False)
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        ok = result.returncode == 2 and "pre-tokenizer" in message and not (out / f"{name}.gguf").exists()
        R.add("d. tokenization", f"{name} refused", ok, f"exit {result.returncode}: {message.split(': ', 2)[-1][:150]}")


# ---------------------------------------------------------------- e. perplexity


def ppl_row(label, ours, theirs, llama_chunks):
    scored = llama_chunks * (CTX - 1 - CTX // 2)
    difference = rel(ours["perplexity"], theirs)
    counts = ours["chunks"] == llama_chunks and ours["tokens"] == scored
    R.add("e. perplexity (ctx 64)", label, difference <= PPL_TOLERANCE and counts,
          f"qtool eval {ours['perplexity']:.4f} vs llama-perplexity {theirs:.4f}: {100 * difference:.3f}%; "
          f"chunks {ours['chunks']}/{llama_chunks}, scored tokens {ours['tokens']}/{scored}")


def check_e(files, work):
    print("e. llama-perplexity on qtool's GGUFs = qtool eval --text --ctx 64", flush=True)
    for folder in ("models/llama-gqa", "models/qwen2-tied", "tiny-llama"):
        ours = qtool_eval(FIX / folder)
        theirs, chunks = llama_perplexity(files.models[folder, "f16"])
        ppl_row(f"{short(folder)} (f16 GGUF)", ours, theirs, chunks)
    for name, adapter in (("lora-f32", "llama-gqa-lora"), ("rslora-f32", "llama-gqa-rslora")):
        ours = qtool_eval(FIX / "models/llama-gqa", adapter=FIX / "models" / adapter)
        theirs, chunks = llama_perplexity(files.models["models/llama-gqa", "f16"], lora=files.adapters[name])
        ppl_row(f"llama-gqa f16 + {adapter} f32 (--lora)", ours, theirs, chunks)
    # Embedding and lm_head targets (llama.cpp gathers rows of token_embd's lora_a): against the
    # adapter merged by qtool (qtool eval applies embedding LoRA merged only); rank and alpha
    # patterns (fixtures/lora/patterns) folded into B.
    torch.manual_seed(0)
    base_model = AutoModelForCausalLM.from_pretrained(FIX / "models/llama-gqa", dtype=torch.float32)
    peft_model = get_peft_model(base_model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                                                       target_modules=["lm_head", "embed_tokens", "q_proj", "k_proj"]))
    heads = work / "lm-head-adapter"
    peft_model.save_pretrained(heads)
    for label, adapter, base, base_gguf in (
            ("llama-gqa + lm_head/embed_tokens/q/k adapter", heads, FIX / "models/llama-gqa", files.models["models/llama-gqa", "f16"]),
            ("tiny-llama + fixtures/lora/patterns (embed, rank/alpha patterns)", FIX / "lora/patterns", FIX / "tiny-llama",
             files.models["tiny-llama", "f16"])):
        gguf_adapter = work / f"{adapter.name}.gguf"
        merged = work / f"{adapter.name}-merged"
        qtool("convert", adapter, gguf_adapter, "--base", base, "--quiet")
        qtool("merge", base, "--adapter", adapter, "-o", merged, "--dtype", "f32", "--quiet")
        ours = qtool_eval(merged)
        theirs, chunks = llama_perplexity(base_gguf, lora=gguf_adapter)
        ppl_row(f"{label} (--lora, vs merged)", ours, theirs, chunks)
    ours = qtool_eval(files.merged_folder)
    theirs, chunks = llama_perplexity(files.merged)
    types = sorted({t.tensor_type.name for t in gguf.GGUFReader(files.merged).tensors})
    ppl_row(f"merged llama-gqa + lora ({'/'.join(types)} GGUF)", ours, theirs, chunks)
    # the file's tokens: qtool's tokenizer.json and llama.cpp's GGUF vocabulary agree
    text = PPL_TEXT.read_text()
    text = text[:-1] if text.endswith("\n") else text  # llama-perplexity's -f drops one trailing newline
    for folder in ("models/llama-gqa", "models/qwen2-tied", "tiny-llama"):
        theirs = llama_tokenize(files.models[folder, "f16"], text, work, parse_special=False)
        ours = json.loads(qtool("tokenize", FIX / folder, "--text", text, "--json").stdout)["ids"]
        R.add("e. perplexity (ctx 64)", f"{short(folder)} ppl.txt tokens", ours == theirs,
              f"{len(ours)} tokens, qtool tokenize = llama-tokenize ({len(theirs)}) id for id, {len(ours) // CTX} chunks"
              if ours == theirs else f"qtool {len(ours)} vs llama.cpp {len(theirs)} tokens")


# ---------------------------------------------------------------- f. GGUFs from the wild


def check_f(files, work):
    print("f. llama-quantize's GGUFs: qtool dequantize = gguf-py, inspect, back to transformers", flush=True)
    out = work / "wild"
    out.mkdir()
    source = out / "model"
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512, bos_token_id=1, eos_token_id=2,
                         max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(source)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIX / "models/llama-gqa" / file, source / file)
    f32 = out / "f32.gguf"
    qtool("convert", source, f32, "--dtype", "f32", "--quiet")
    ours = qtool_eval(source)
    theirs, chunks = llama_perplexity(f32)
    ppl_row_f("F32 (qtool convert)", ours, theirs, chunks)
    for kind in WILD_TYPES:
        path = out / f"{kind}.gguf"
        result = run([LLAMA_BIN / "llama-quantize", f32, path, kind, THREADS], check=False)
        if result.returncode != 0:
            R.add("f. GGUFs from llama-quantize", kind, None, f"llama-quantize failed: {result.stderr.strip()[-150:]}")
            continue
        reader, tensors = gguf_py_dequantized(path)
        problems = compare_dequantize(path, work, tensors)
        listed = {t["name"]: t.get("quantization", t["dtype"]) for t in json.loads(qtool("inspect", path, "--json").stdout)["tensors"]}
        listing = [n for n, (t, _) in tensors.items() if listed.get(n) != t]
        types = sorted({t for t, _ in tensors.values()})
        R.add("f. GGUFs from llama-quantize", f"{kind} dequantize, inspect", not problems and not listing,
              f"{len(tensors)} tensors ({', '.join(types)}): "
              + ("qtool dequantize = gguf-py bit for bit" if not problems else "; ".join(problems[:3]))
              + ("; inspect lists every type" if not listing else f"; inspect differs on {listing[:3]}"))
        back = out / f"{kind}-transformers"
        qtool("convert", path, back, "--quiet")
        ours = qtool_eval(back)
        theirs, chunks = llama_perplexity(path)
        # control: the dequantized weights as an F32 GGUF, where llama.cpp multiplies in float32 too
        # (with the block types it quantizes the activations to 8 bits for its dot products)
        control = out / f"{kind}-dequantized-f32.gguf"
        qtool("convert", back, control, "--dtype", "f32", "--quiet")
        plain, _ = llama_perplexity(control)
        ppl_row_f(f"{kind} → transformers, eval", ours, theirs, chunks,
                  f"; as F32 GGUF llama.cpp gives {plain:.3f} ({100 * rel(ours['perplexity'], plain):.3f}%)")


def ppl_row_f(label, ours, theirs, chunks, extra=""):
    difference = rel(ours["perplexity"], theirs)
    R.add("f. GGUFs from llama-quantize", label, difference <= PPL_TOLERANCE and ours["chunks"] == chunks,
          f"qtool eval {ours['perplexity']:.3f} vs llama-perplexity {theirs:.3f}: {100 * difference:.3f}% "
          f"({ours['chunks']}/{chunks} chunks){extra}")


# ---------------------------------------------------------------- main


CHECKS = {"a": check_a, "b": check_b, "c": check_c, "d": check_d, "e": check_e, "f": check_f}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks (a-f)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    version = importlib.metadata.version("gguf")
    tools = [Path(QTOOL), LLAMA_BIN / "llama-tokenize", LLAMA_BIN / "llama-perplexity", LLAMA_BIN / "llama-quantize",
             Path(GREEDY)]
    missing = [str(t) for t in tools if not os.access(t, os.X_OK)]
    if missing:
        sys.exit(f"missing: {', '.join(missing)} (make build; make llama-cpp, or LLAMA_CPP_BIN / LLAMA_GREEDY_IDS)")
    if version != GGUF_PY:
        sys.exit(f"gguf {version} in the venv, the checks pin {GGUF_PY} (fixtures/generate/requirements.txt)")
    print(f"qtool {QTOOL}\nllama.cpp {LLAMA_BIN}, {GREEDY}\ngguf-py {version}, transformers {transformers.__version__}")
    work = Path(tempfile.mkdtemp(prefix="qtool-gguf-interop-"))
    started = time.time()
    try:
        files = Files(work)
        for key in args.only.split(","):
            begun = time.time()
            try:
                CHECKS[key.strip()](files, work)
            except Exception as error:  # noqa: BLE001 — a tool that fails is a failed check, the others still run
                R.add(f"{key.strip()}. (stopped)", "error", False, f"{type(error).__name__}: {str(error)[:400]}")
            print(f"  ({time.time() - begun:.0f} s)", flush=True)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    R.table()
    print(f"{time.time() - started:.0f} s")
    sys.exit(1 if R.failures else 0)


if __name__ == "__main__":
    main()
