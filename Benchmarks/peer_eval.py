"""The Python peer of `qtool eval --data`: transformers (float32, or bitsandbytes 4-bit with
float32 compute) on the same JSON Lines, each line tokenized alone with special tokens, cut to
--max-seq-len, batches of --batch-size; prints the forward seconds (load excluded), the tokens run
and the loss as JSON."""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("data")
parser.add_argument("--max-seq-len", type=int, default=512)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--nf4", action="store_true")
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model)
if args.nf4:
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=config, device_map="cpu", dtype=torch.float32)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
else:
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
model.eval()
lines = [json.loads(line)["text"] for line in open(args.data) if line.strip()]
sequences = [tokenizer(text)["input_ids"][: args.max_seq_len] for text in lines]
start = time.perf_counter()
total, predicted, run = 0.0, 0, 0
with torch.no_grad():
    for i in range(0, len(sequences), args.batch_size):
        batch = sequences[i : i + args.batch_size]
        assert len({len(s) for s in batch}) == 1, "the bench's lines all give max-seq-len tokens"
        ids = torch.tensor(batch)
        logits = model(ids).logits.float()
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        total += nll.item()
        predicted += ids[:, 1:].numel()
        run += ids.numel()
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "tokens": run, "tokens_per_second": run / seconds, "loss": total / predicted,
                  "threads": torch.get_num_threads()}))
