"""The Python peer of `qtool tokenize TOKENIZER --file TEXT`: HF tokenizers on one thread encodes
the text, as one string (what qtool does) and line by line (faster in tokenizers: its offsets
make one long string slow). Prints the in-process seconds of each (loading excluded) and writes
the ids of the whole-text encoding to OUT for comparison."""
import json
import os
import sys
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"
from tokenizers import Tokenizer

tokenizer = Tokenizer.from_file(sys.argv[1])
text = open(sys.argv[2], encoding="utf-8").read()
lines = text.splitlines(keepends=True)
start = time.perf_counter()
ids = tokenizer.encode(text).ids
whole = time.perf_counter() - start
start = time.perf_counter()
for line in lines:
    tokenizer.encode(line, add_special_tokens=False)
by_line = time.perf_counter() - start
with open(sys.argv[3], "w") as out:
    json.dump(ids, out)
print(json.dumps({"seconds": whole, "lines_seconds": by_line, "tokens": len(ids)}))
