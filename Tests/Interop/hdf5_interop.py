"""`make interop` (HDF5 part): Keras loads what qtool writes and predicts as the original model.

Converts the Keras fixtures to safetensors and back with the built qtool (also through
`--layout torch` and back), then Keras (torch backend) loads each result — `load_weights` for
`.weights.h5`, `load_model` for the legacy `.h5` — and predicts on the fixture's input.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fixtures/generate"))

import h5py
import keras
import numpy as np
from safetensors.numpy import load_file

from hdf5_goldens import keras_model

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "fixtures/hdf5"
QTOOL = str(ROOT / ".build/release/qtool")


def convert(*args):
    subprocess.run([QTOOL, "convert", *map(str, args), "--quiet"], check=True)


def main():
    failures = 0
    work = Path(tempfile.mkdtemp(prefix="qtool-hdf5-"))
    golden = load_file(FIX / "keras-predictions.safetensors")
    # The reference is the original file's model predicting on this machine: Keras sums in an
    # order its backend picks for this CPU, so the golden recorded elsewhere matches only within
    # rounding (checked below), while the same weights here must predict identically.
    reference = keras_model()
    reference.load_weights(FIX / "keras3.weights.h5")
    expected = reference.predict(golden["input"], verbose=0)
    scale = np.abs(golden["output"]).max()
    close = np.abs(expected - golden["output"]).max() <= 64 * np.finfo(np.float32).eps * scale
    print(f"{'ok  ' if close else 'FAIL'} {'the original model predicts the recorded golden within rounding':60}")
    failures += not close

    def check(name, prediction):
        nonlocal failures
        ok = np.array_equal(prediction, expected)
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:60} predictions {'identical' if ok else 'differ'}")

    convert(FIX / "keras3.weights.h5", work / "k3.safetensors")
    convert(work / "k3.safetensors", work / "k3.weights.h5")
    model = keras_model()
    model.load_weights(work / "k3.weights.h5")
    check("keras3 .weights.h5 -> safetensors -> .weights.h5", model.predict(golden["input"], verbose=0))

    convert(work / "k3.safetensors", work / "k3-torch.safetensors", "--layout", "torch")
    shapes = {k: v.shape for k, v in load_file(work / "k3-torch.safetensors").items()}
    assert shapes["layers.dense.vars.0"] == (16, 8), shapes
    convert(work / "k3-torch.safetensors", work / "k3-back.weights.h5", "--layout", "keras")
    model = keras_model()
    model.load_weights(work / "k3-back.weights.h5")
    check("keras3, --layout torch and back to keras", model.predict(golden["input"], verbose=0))

    convert(FIX / "keras-legacy.h5", work / "legacy.safetensors")
    convert(work / "legacy.safetensors", work / "legacy.h5")
    model = keras.models.load_model(work / "legacy.h5")
    check("legacy keras .h5 -> safetensors -> .h5 (load_model)", model.predict(golden["input"], verbose=0))

    # Every group, dataset and attribute of the original is in the rewritten file.
    for original, rewritten in ((FIX / "keras3.weights.h5", work / "k3.weights.h5"), (FIX / "keras-legacy.h5", work / "legacy.h5"),
                                (FIX / "generic.h5", None)):
        if rewritten is None:
            convert(original, work / "g.safetensors")
            convert(work / "g.safetensors", work / "g.h5")
            rewritten = work / "g.h5"
        tree = {}
        for label, path in (("a", original), ("b", rewritten)):
            with h5py.File(path) as f:
                items = {"/": {k: repr(v) for k, v in f.attrs.items()}}
                f.visititems(lambda n, o: items.__setitem__(n, (repr(o[()]) if isinstance(o, h5py.Dataset) else "group",
                                                               {k: repr(v) for k, v in o.attrs.items()})))
                tree[label] = items
        ok = tree["a"] == tree["b"]
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {original.name + ' rewritten: same groups, datasets, attributes':60}")

    print(f"{failures} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
