"""`make interop` (fine-tune part): PEFT loads the LoRA adapter `qtool finetune` trains, and scores it
as `qtool eval` does.

Runs the built qtool's `finetune` for 6 steps on the bitsandbytes NF4 fixture from the committed
initial adapter (the hyperparameters of fixtures/finetune/goldens/goldens.json's `run`), loads the
output folder with `PeftModel.from_pretrained` on transformers + bitsandbytes' 4-bit load of the same
base, computes the eval loss on fixtures/finetune/eval.jsonl (each line alone, cut to 64 tokens,
Σ next-token NLL / positions), and compares it with `qtool eval ... --adapter OUTPUT --json`: they
must agree within 1e-4 relative. Exits 1 when a check fails.

    finetune_interop.py                 the whole check
    finetune_interop.py --adapter DIR   skip the training: check an existing adapter folder
                                        (e.g. fixtures/finetune/init-adapter)
"""
import argparse
import json
import math
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "fixtures/generate"))

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from common import portable_bnb  # noqa: E402

warnings.filterwarnings("ignore")
FIX = ROOT / "fixtures"
QTOOL = str(ROOT / ".build/release/qtool")
BASE = FIX / "models/llama-gqa-bnb-nf4"
DATA = FIX / "finetune"
STEPS = 6
TOLERANCE = 1e-4


def finetune(output, run):
    args = [QTOOL, "finetune", str(BASE), "--data", str(DATA / run["data"]), "--output", str(output),
            "--init-adapter", str(DATA / "init-adapter"), "--steps", str(STEPS),
            "--batch-size", str(run["batch_size"]), "--grad-accum", str(run["grad_accum"]),
            "--seq-len", str(run["seq_len"]), "--lr", repr(run["lr"]), "--schedule", run["schedule"],
            "--warmup-steps", str(run["warmup_steps"]), "--no-shuffle", "--quiet"]
    print("$", " ".join(args[1:]), flush=True)
    if subprocess.run(args).returncode != 0:
        print("FAIL qtool finetune exited with an error")
        sys.exit(1)


def peft_eval_loss(adapter, texts, seq_len):
    """transformers + bitsandbytes (4-bit load, compute float32, eager attention) with PEFT's LoRA
    layers: Σ next-token NLL over every line (alone, with special tokens, cut to seq_len) / positions;
    log-softmax in float64 of the float32 logits."""
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    model = AutoModelForCausalLM.from_pretrained(BASE, dtype=torch.float32, device_map="cpu",
                                                 attn_implementation="eager")
    portable_bnb(model)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model = portable_bnb(PeftModel.from_pretrained(model, adapter)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"][:seq_len]
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            lp = torch.log_softmax(logits[:-1].double(), dim=-1)
            total += float(-lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
            count += len(ids) - 1
    return total / count, count


def qtool_eval_loss(adapter, data, seq_len):
    out = subprocess.run([QTOOL, "eval", str(BASE), "--adapter", str(adapter), "--data", str(data),
                          "--max-seq-len", str(seq_len), "--json"], check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    return report["loss"], report["tokens"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="check this adapter folder instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = json.loads((DATA / "goldens/goldens.json").read_text())["run"]
    failures = 0

    work = tempfile.TemporaryDirectory(prefix="qtool-finetune-")
    if args.adapter:
        adapter = args.adapter.resolve()
    else:
        adapter = Path(work.name) / "adapter"
        finetune(adapter, run)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if not (adapter / name).is_file():
                print(f"FAIL qtool finetune wrote no {name} in {adapter}")
                sys.exit(1)
        # The initial adapter's B is zero (PEFT's init): after training it must not be.
        trained = load_file(adapter / "adapter_model.safetensors")
        initial = load_file(DATA / "init-adapter/adapter_model.safetensors")
        moved = sorted(trained) == sorted(initial) and all(
            torch.count_nonzero(trained[k]) > 0 for k in trained if "lora_B" in k)
        failures += not moved
        print(f"{'ok  ' if moved else 'FAIL'} the output holds the init adapter's {len(initial)} tensors, every lora_B "
              f"trained away from zero")

    adapters = [adapter]
    if not args.adapter:
        # Adapters qtool makes itself (its own adapter_config.json): DoRA on every linear layer,
        # and rsLoRA on two with dropout.
        for name, flags in (("fresh-dora", ["--use-dora"]),
                            ("fresh-rslora", ["--use-rslora", "--target", "q_proj,v_proj", "--dropout", "0.1"])):
            fresh = Path(work.name) / name
            cmd = [str(QTOOL), "finetune", str(ROOT / "fixtures/models/llama-gqa-bnb-nf4"), "--data", str(DATA / "train.jsonl"),
                   "--output", str(fresh), "--steps", "6", "--batch-size", "2", "--seq-len", "64", "--lr", "1e-2", "--quiet"] + flags
            print("$ " + " ".join(cmd[1:]))
            subprocess.run(cmd, check=True)
            adapters.append(fresh)

    data = DATA / run["eval_data"]
    texts = [json.loads(line)["text"] for line in data.read_text().splitlines() if line.strip()]
    for adapter in adapters:
        theirs, their_tokens = peft_eval_loss(adapter, texts, run["eval_seq_len"])
        ours, our_tokens = qtool_eval_loss(adapter, data, run["eval_seq_len"])
        rel = abs(ours - theirs) / abs(theirs)
        ok = rel <= TOLERANCE and our_tokens == their_tokens and math.isfinite(ours)
        failures += not ok
        print(f"PEFT + transformers + bitsandbytes eval loss: {theirs:.8f} over {their_tokens} tokens")
        print(f"qtool eval loss:                              {ours:.8f} over {our_tokens} tokens")
        print(f"{'ok  ' if ok else 'FAIL'} eval loss of {adapter.name} on llama-gqa-bnb-nf4: relative difference "
              f"{rel:.2e} (≤ {TOLERANCE:g})")
    print(f"{failures} failure(s)")
    work.cleanup()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
