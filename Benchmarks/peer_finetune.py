"""The Python peer of `qtool finetune`: QLoRA with transformers + PEFT + bitsandbytes on CPU. The
float32 HF folder is quantized on load to NF4 with double quantization and float32 compute (or kept
float32 with --no-quantize), LoRA on the 7 linear layers of every block (dropout 0), AdamW
(foreach=False, weight decay 0.01, as qtool's defaults); each line of the JSON Lines tokenized alone
with special tokens, cut to --seq-len, --batch-size consecutive lines a step in file order (again
from the first line when they run out); loss = mean next-token NLL over the batch (the model's own,
from labels=ids, as a Trainer has it; it shifts the labels, not the logits, so makes no copy of the
logits as peer_eval.py's slice does), then backward,
clip_grad_norm_(1.0), step. One warm-up step untimed, then --steps timed; prints the timed seconds
(load excluded), the tokens trained and the last loss as JSON.

bitsandbytes on CPU: a Linear4bit in eval mode fed an input without grad repacks its weight for
the AVX512-BF16 inference kernel (gemv_4bit, bf16 compute, no autograd), once, for good; the model
is put in training mode before any forward so that never happens, and support_avx512bf16_for_cpu
is cleared as in peer_eval.py all the same. In training the forward is gemm_4bit (the CPU backend
has no kernel of its own: the default one dequantizes the weight to float32, then a linear) and
the backward is MatMul4Bit's (grad_input = grad_output @ the dequantized weight): both work on CPU
as they are, no workaround needed."""
import argparse
import json
import os
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("data")
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--seq-len", type=int, default=256)
parser.add_argument("--rank", type=int, default=16)
parser.add_argument("--alpha", type=float, default=32)
parser.add_argument("--lr", type=float, default=1e-4)
parser.add_argument("--no-quantize", action="store_true")
parser.add_argument("--grad-checkpointing", action="store_true")
parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(args.model)
if args.no_quantize:
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
else:
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=config, device_map="cpu", dtype=torch.float32)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
if args.grad_checkpointing:
    # Non-reentrant checkpointing recomputes each block in the backward whether or not its input
    # requires grad (the embeddings are frozen), so enable_input_require_grads is not needed.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
lora = LoraConfig(r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0,
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
model = get_peft_model(model, lora)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, foreach=False)

lines = [json.loads(line)["text"] for line in open(args.data) if line.strip()]
sequences = [tokenizer(text)["input_ids"][: args.seq_len] for text in lines]
batches = [sequences[i : i + args.batch_size] for i in range(0, len(sequences), args.batch_size)]
assert all(len(b) == args.batch_size and {len(s) for s in b} == {args.seq_len} for b in batches), \
    "the bench's lines all give seq-len tokens, batch-size of them a step"


def step(batch):
    ids = torch.tensor(batch)
    loss = model(input_ids=ids, labels=ids).loss  # transformers' mean next-token NLL (ForCausalLMLoss)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item(), ids.numel()


step(batches[0])  # warm-up, untimed
start = time.perf_counter()
tokens = 0
for i in range(args.steps):
    loss, n = step(batches[i % len(batches)])
    tokens += n
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "steps": args.steps, "tokens": tokens, "tokens_per_second": tokens / seconds,
                  "loss": loss, "threads": torch.get_num_threads()}))
