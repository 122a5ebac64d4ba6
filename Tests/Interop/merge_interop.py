"""`make interop`: qtool's merged checkpoints, loaded by transformers, against PEFT's own merges.

Runs the built qtool on the bundled fixtures, loads each output with transformers (bitsandbytes for
the 4-bit one) and compares its logits on a fixed prompt with those of PEFT's merge_and_unload of
the same base and adapter. Needs the Python reference libraries (`make venv`); the Swift tests do
not run this. Exits 1 when a check fails.
"""
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "fixtures"
QTOOL = str(ROOT / ".build/release/qtool")
IDS = torch.tensor([[0, 5, 17, 300, 801, 42, 7, 1000]])


def logits(model):
    # On CPUs with AVX-512 BF16, bitsandbytes 0.50 repacks 4-bit weights for a kernel that needs
    # in_features to be a multiple of the blocksize (the fixture's 352 is not); use its portable
    # path, the one the golden logits came from, on every CPU.
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        return model(IDS % model.config.vocab_size).logits.float()


def peft_merged(base, adapter, dtype):
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def main():
    failures = 0
    work = Path(tempfile.mkdtemp(prefix="qtool-interop-"))

    def check(name, ours, theirs, tolerance):
        nonlocal failures
        worst = (ours - theirs).abs().max().item() / theirs.abs().max().item()
        ok = worst <= tolerance
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:58} max |Δlogit| / max |logit| = {worst:.2e} (≤ {tolerance:g})")

    def merge(*args):
        subprocess.run([QTOOL, "merge", *map(str, args), "--quiet"], check=True)

    llama = FIX / "tiny-llama"
    for adapter, dtype, flag, tol in (("lora", torch.float32, ["--dtype", "f32"], 1e-5),
                                      ("dora", torch.float32, ["--dtype", "f32"], 1e-5),
                                      ("patterns", torch.float32, ["--dtype", "f32"], 1e-5),
                                      ("mlx-lora", torch.float32, ["--dtype", "f32"], 1e-5),
                                      ("lora", torch.bfloat16, [], 2e-2)):
        out = work / f"{adapter}-{str(dtype)[6:]}"
        merge(llama, "--adapter", FIX / "lora" / adapter, "-o", out, *flag)
        peft_adapter = FIX / "lora" / adapter.replace("mlx-", "")
        theirs = logits(peft_merged(llama, peft_adapter, dtype))
        ours = logits(AutoModelForCausalLM.from_pretrained(out, dtype=dtype))
        check(f"{adapter} into tiny-llama ({str(dtype)[6:]})", ours, theirs, tol)

    qwen = FIX / "lora/bases/tiny-qwen2"
    out = work / "qwen2-bias"
    merge(qwen, "--adapter", FIX / "lora/qwen2-bias", "-o", out)
    check("qwen2-bias (lora_bias, modules_to_save) into tiny-qwen2", logits(AutoModelForCausalLM.from_pretrained(out)),
          logits(peft_merged(qwen, FIX / "lora/qwen2-bias", torch.float32)), 1e-5)

    # The 4-bit base: transformers loads qtool's bitsandbytes folder as Linear4bit.
    out = work / "bnb"
    merge(FIX / "tiny-llama-bnb-nf4", "--adapter", FIX / "lora/lora", "-o", out)
    model = AutoModelForCausalLM.from_pretrained(out)
    layer = model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit", type(layer)
    # Against PEFT's own merged folder run the same way on this machine (bitsandbytes' CPU
    # kernels differ between CPUs, so logits recorded elsewhere are not the reference here).
    golden = load_file(FIX / "lora/tiny-llama-bnb-nf4-merged.logits.safetensors")
    assert torch.equal(golden["input_ids"], IDS)
    theirs = logits(AutoModelForCausalLM.from_pretrained(FIX / "lora/tiny-llama-bnb-nf4-merged"))
    check("lora into tiny-llama-bnb-nf4 (loaded as Linear4bit)", logits(model), theirs, 1e-2)

    print(f"{failures} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
