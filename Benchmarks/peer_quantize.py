"""The Python peer of `qtool quantize` / `dequantize`: bitsandbytes' quantize_4bit (NF4, blocksize
64, double quantization) and dequantize_4bit on CPU, in process, over every 2-D tensor of a
safetensors file. Prints the in-process seconds of each (loading excluded) as JSON."""
import json
import sys
import time

import torch
import bitsandbytes.functional as F
from safetensors.torch import load_file

tensors = [t for t in load_file(sys.argv[1]).values() if t.dim() == 2]
params = sum(t.numel() for t in tensors)
start = time.perf_counter()
states = [F.quantize_4bit(t, blocksize=64, compress_statistics=True, quant_type="nf4") for t in tensors]
quantize = time.perf_counter() - start
start = time.perf_counter()
outs = [F.dequantize_4bit(q, s) for q, s in states]
dequantize = time.perf_counter() - start
print(json.dumps({"parameters": params, "quantize_seconds": quantize, "dequantize_seconds": dequantize,
                  "threads": torch.get_num_threads()}))
