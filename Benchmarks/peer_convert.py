"""The Python peer of `qtool convert`: safetensors' torch API loading a file and saving it again,
optionally casting float tensors. Prints the in-process seconds (imports excluded) as JSON."""
import json
import sys
import time

import torch
from safetensors.torch import load_file, save_file

src, dst = sys.argv[1], sys.argv[2]
dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}.get(sys.argv[3] if len(sys.argv) > 3 else "")
start = time.perf_counter()
tensors = load_file(src)
if dtype is not None:
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
save_file(tensors, dst, metadata={"format": "pt"})
print(json.dumps({"seconds": time.perf_counter() - start}))
