#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/seeds/<target>/.

Needs only the Python standard library (no torch). Seeds come from real files where they are
small enough (the test pickles, the pickle stream of the StyleGAN2 fixture checkpoint, the
request files and their masks) and otherwise are small checkpoints written in torch.save's
layout: libFuzzer mutates large inputs slowly, and the fixture checkpoints are over 1 MB.

Run from the repository root: python3 fuzz/make_seeds.py [path/to/shared/fixtures]
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


def write(target, name, data):
    folder = os.path.join(SEEDS, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


# Stand-ins for the torch names that torch.save pickles, so that pickle writes the same
# GLOBAL opcodes without torch installed.
torch_module = types.ModuleType("torch")
utils_module = types.ModuleType("torch._utils")


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


_rebuild_tensor_v2.__module__ = "torch._utils"
utils_module._rebuild_tensor_v2 = _rebuild_tensor_v2


class FloatStorage:
    pass


class LongStorage:
    pass


FloatStorage.__module__ = LongStorage.__module__ = "torch"
torch_module.FloatStorage = FloatStorage
torch_module.LongStorage = LongStorage
torch_module._utils = utils_module
sys.modules["torch"] = torch_module
sys.modules["torch._utils"] = utils_module


class Storage:
    def __init__(self, key, storage_type, values):
        self.key, self.storage_type, self.values = key, storage_type, values

    def raw(self):
        code = "f" if self.storage_type is FloatStorage else "q"
        return struct.pack("<%d%s" % (len(self.values), code), *self.values)


class Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        return (_rebuild_tensor_v2, (self.storage, self.offset, self.size, self.stride, False,
                                     collections.OrderedDict()))


class CheckpointPickler(pickle.Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        pid = ("storage", obj.storage_type, obj.key, "cpu", len(obj.values))
        return pid + (None,) if self.legacy else pid


def state_dict():
    weight = Storage("0", FloatStorage, [0.5, -1.0, 2.0, 0.25, 3.0, -0.75])
    steps = Storage("1", LongStorage, [7])
    tensors = collections.OrderedDict()
    tensors["conv.weight"] = Tensor(weight, 0, (2, 3), (3, 1))
    tensors["conv.weight_t"] = Tensor(weight, 0, (3, 2), (1, 3))
    tensors["bn.num_batches_tracked"] = Tensor(steps, 0, (), ())
    tensors["meta"] = {"version": 1, "name": "seed"}
    return tensors, [weight, steps]


def object_pickle(legacy):
    tensors, storages = state_dict()
    buffer = io.BytesIO()
    CheckpointPickler(buffer, legacy).dump(tensors)
    return buffer.getvalue(), storages


def torch_zip():
    data, storages = object_pickle(legacy=False)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for storage in storages:
            archive.writestr("archive/data/" + storage.key, storage.raw())
        archive.writestr("archive/version", "3\n")
    return buffer.getvalue()


def torch_legacy():
    data, storages = object_pickle(legacy=True)
    out = io.BytesIO()
    pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, out, protocol=2)
    out.write(data)
    pickle.dump([s.key for s in storages], out, protocol=2)
    for storage in storages:
        out.write(struct.pack("<q", len(storage.values)))
        out.write(storage.raw())
    return out.getvalue()


def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


class InertUnpickler(pickle.Unpickler):
    """Walks a pickle stream without importing or calling anything it names."""

    def find_class(self, module, name):
        return lambda *args, **kwargs: None

    def persistent_load(self, pid):
        return None


def fixture_pickles(fixtures):
    """The pickle streams inside the real StyleGAN2 fixture checkpoints (kilobytes, no storages)."""
    streams = []
    zip_path = os.path.join(fixtures, "stylegan2-tiny", "generator.pt")
    if os.path.exists(zip_path):
        with zipfile.ZipFile(zip_path) as archive:
            for name in archive.namelist():
                if name.endswith("/data.pkl"):
                    streams.append(("fixture_zip_data.pkl", archive.read(name)))
    legacy_path = os.path.join(fixtures, "stylegan2-tiny", "generator_legacy.pt")
    if os.path.exists(legacy_path):
        with open(legacy_path, "rb") as f:
            data = f.read()
        offset = 0
        for index in range(5):
            reader = io.BytesIO(data[offset:])
            InertUnpickler(reader).load()
            streams.append(("fixture_legacy_%d.pkl" % index, data[offset:offset + reader.tell()]))
            offset += reader.tell()
    return streams


def request_files(fixtures):
    paths = [os.path.join(ROOT, "requests", "dcgan-sunglasses.json"),
             os.path.join(fixtures, "stylegan2-tiny", "request_layer6.json")]
    return [(os.path.basename(p), open(p, "rb").read()) for p in paths if os.path.exists(p)]


def main():
    fixtures = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "fixtures")

    pickle_dir = os.path.join(ROOT, "tests", "data", "pickle")
    for name in sorted(os.listdir(pickle_dir)):
        if name.endswith(".pkl"):
            write("pickle", name, open(os.path.join(pickle_dir, name), "rb").read())
    for name, data in fixture_pickles(fixtures):
        write("pickle", name, data)
    write("pickle", "state_dict.pkl", object_pickle(legacy=False)[0])

    write("torch_zip", "state_dict.pt", torch_zip())
    write("torch_legacy", "state_dict.pt", torch_legacy())

    write("safetensors", "small.safetensors", safetensors(
        {"w": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), "i": ("I64", [1], struct.pack("<q", 5)),
         "u": ("U32", [2], struct.pack("<2I", 1, 2)), "b": ("BOOL", [2], b"\x00\x01")},
        {"rankone_patch": "1", "layer": "3"}))
    write("safetensors", "empty.safetensors", safetensors({}))

    for name, data in request_files(fixtures):
        write("request", name, data)
        request = json.loads(data)
        for field in ("object", "paste"):
            if isinstance(request.get(field), list):
                url = request[field][1]
                write("mask_url", "%s_%s.txt" % (os.path.splitext(name)[0], field), b"\x00" + url.encode())
                png = __import__("base64").b64decode(url.split(",", 1)[1])
                write("mask_url", "%s_%s.png" % (os.path.splitext(name)[0], field), b"\x01" + png)
    write("request", "minimal_erase.json", json.dumps(
        {"mode": "erase", "paste": [0, "data:image/png;base64,"], "rank": 2}).encode())


if __name__ == "__main__":
    main()
