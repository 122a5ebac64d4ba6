"""The Python peer of `qtool merge`: transformers + PEFT load the base and the adapter, merge with
merge_and_unload() and save the merged model with save_pretrained (same shard size as the base).
Prints the in-process seconds (imports excluded) as JSON."""
import json
import sys
import time

start = time.perf_counter()
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
imported = time.perf_counter()

base, adapter, out, shard = sys.argv[1:5]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(model, adapter)
merged = model.merge_and_unload()
merged.save_pretrained(out, max_shard_size=shard)
print(json.dumps({"seconds": time.perf_counter() - imported, "import_seconds": imported - start,
                  "threads": torch.get_num_threads()}))
