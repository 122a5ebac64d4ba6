"""The Python peer of `qtool convert file.h5 out.safetensors`: h5py reads every numeric dataset,
safetensors' save_file writes them (names: paths joined with "."). Prints in-process seconds."""
import json
import sys
import time

start = time.perf_counter()
import h5py
import numpy as np
from safetensors.numpy import save_file
imported = time.perf_counter()

tensors = {}
with h5py.File(sys.argv[1], "r") as f:
    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.dtype.kind in "fiub":
            tensors[name.replace("/", ".")] = np.array(obj[()], order="C")
    f.visititems(visit)
save_file(tensors, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - imported, "import_seconds": imported - start}))
