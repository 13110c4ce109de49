#!/usr/bin/env python3
"""Writes the hostile and broken input files of tests/hostile/ (standard library only).

Each file is small and is either damaged in one way or built to attack a reader: pickles that
name code to run, zip archives whose declared sizes lie, files whose lengths and shapes lie,
non-finite weights and malformed masks. tests/hostile_inputs_test.cc and tests/cli/hostile_*.sh
check the error rankone reports for each one, and docs/robustness.md lists them.

Run from the repository root: python3 tests/hostile/make_hostile.py
"""
import base64
import io
import json
import math
import os
import struct
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))


def write(name, data):
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


# pickles

def legacy_header():
    """The first three pickles of a legacy torch.save file: magic number, protocol, system info."""
    out = io.BytesIO()
    import pickle
    pickle.dump(0x1950A86A20F9469CFC6C, out, protocol=2)
    pickle.dump(1001, out, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, out, protocol=2)
    return out.getvalue()


def call_pickle(module, name, argument):
    """Protocol 2 pickle of module.name(argument): GLOBAL, the argument tuple, REDUCE."""
    arg = argument.encode()
    return (b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" +
            b"X" + struct.pack("<I", len(arg)) + arg + b"\x85R.")


def stored_zip(entries):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def rebuild_tensor_pickle(key, numel, size, stride, offset=0, legacy=False):
    """Protocol 2 pickle of {"w": _rebuild_tensor_v2(storage, offset, size, stride, False, {})}.
    Legacy persistent ids have a sixth field (the view, None here)."""
    def integer(value):
        if -(1 << 31) <= value < (1 << 31):
            return b"J" + struct.pack("<i", value)
        return b"\x8a\x08" + struct.pack("<q", value)

    def text(value):
        return b"X" + struct.pack("<I", len(value)) + value.encode()

    def int_tuple(values):
        return b"(" + b"".join(integer(v) for v in values) + b"t"

    persistent = b"(" + text("storage") + b"ctorch\nFloatStorage\n" + text(key) + text("cpu") + integer(numel) + (b"N" if legacy else b"") + b"tQ"
    return (b"\x80\x02}" + text("w") + b"ctorch._utils\n_rebuild_tensor_v2\n(" + persistent + integer(offset) +
            int_tuple(size) + int_tuple(stride) + b"\x89}tR" + b"s.")


def zip_bomb():
    """A checkpoint whose data.pkl is deflate-compressed: 40 KB that declare 40 MB."""
    payload = b"\x80\x02}." + b"\x00" * (40 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("archive/data.pkl", payload)
    return buffer.getvalue()


def zip_lying_size():
    """A stored checkpoint whose central directory declares a 4 GB data.pkl in a 200-byte file."""
    data = bytearray(stored_zip([("archive/data.pkl", b"\x80\x02}.")]))
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<II", data, central + 20, 0xFFFFFFF0, 0xFFFFFFF0)  # compressed and uncompressed size
    return bytes(data)


def zip_storage_past_end():
    """A tensor whose size and stride reach past the end of its 4-element storage."""
    return stored_zip([("archive/data.pkl", rebuild_tensor_pickle("0", 4, [1000, 1000], [1000, 1])),
                       ("archive/data/0", struct.pack("<4f", 1, 2, 3, 4))])


def legacy_lying_count():
    """A legacy checkpoint whose storage claims 2^40 elements but contains 4."""
    out = io.BytesIO()
    out.write(legacy_header())
    out.write(rebuild_tensor_pickle("0", 1 << 40, [4], [1], legacy=True))
    out.write(b"\x80\x02]X\x01\x00\x00\x000a.")  # ["0"]
    out.write(struct.pack("<q", 1 << 40))
    out.write(struct.pack("<4f", 1, 2, 3, 4))
    return out.getvalue()


# safetensors

def safetensors(header, data=b"", header_size=None):
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    size = len(text) if header_size is None else header_size
    return struct.pack("<Q", size) + text + data


def float_bytes(values):
    return struct.pack("<%df" % len(values), *values)


def tiny_generator(poison):
    """Weights of a two-block sequential generator (latent 4 -> 8x4x4 -> 3x8x8) with `poison` as
    one element of the second block's weight."""
    w0 = [0.01 * ((i * 7) % 13 - 6) for i in range(4 * 8 * 4 * 4)]
    w1 = [0.01 * ((i * 5) % 11 - 5) for i in range(8 * 3 * 4 * 4)]
    w1[17] = poison
    bias = [0.0, 0.1, -0.1]
    tensors, data = {}, b""
    for name, shape, values in (("net.0.weight", [4, 8, 4, 4], w0), ("net.1.weight", [8, 3, 4, 4], w1),
                                ("net.1.bias", [3], bias)):
        raw = float_bytes(values)
        tensors[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return safetensors(tensors, data)


def tiny_card(weights):
    return json.dumps({
        "name": "tiny-hostile", "architecture": "sequential", "weights": weights,
        "latent": {"size": 4, "distribution": "normal"}, "default_layer": 1,
        "blocks": [
            {"conv": {"type": "conv_transpose", "weight": "net.0.weight", "bias": None,
                      "in": 4, "out": 8, "kernel": 4, "stride": 1, "padding": 0},
             "activation": {"type": "relu"}},
            {"conv": {"type": "conv_transpose", "weight": "net.1.weight", "bias": "net.1.bias",
                      "in": 8, "out": 3, "kernel": 4, "stride": 2, "padding": 1},
             "activation": {"type": "tanh"}}]}, indent=1) + "\n"


def patch_with(value):
    """A rankone patch file (format 1) for layer 3 of dcgan-celeba32 whose lambda contains `value`
    and whose base weight hash matches no model."""
    d = float_bytes([1.0] + [0.0] * 63)
    lam = float_bytes([value] + [0.0] * (32 * 16 - 1))
    meta = {"rankone_patch": "1", "layer": "3", "layer_name": "block3", "weight_name": "generator_deconv.3.0.weight",
            "base_weight_sha256": "0" * 64, "model": "hostile", "request": "{}", "solver": "{}", "result": "{}"}
    return safetensors({"__metadata__": meta,
                        "d": {"dtype": "F32", "shape": [1, 64], "data_offsets": [0, len(d)]},
                        "lambda": {"dtype": "F32", "shape": [32, 1, 4, 4],
                                   "data_offsets": [len(d), len(d) + len(lam)]}}, d + lam)


# masks and requests

def png(width, height, rgba_rows):
    """An 8-bit RGBA PNG from rows of bytes."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + row for row in rgba_rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def mask_url(width, height, painted):
    """A white-on-transparent mask of width x height with the (x, y) pixels in `painted` set."""
    rows = []
    for y in range(height):
        row = bytearray(width * 4)
        for x in range(width):
            if (x, y) in painted:
                row[x * 4:x * 4 + 4] = b"\xff\xff\xff\xff"
        rows.append(bytes(row))
    return "data:image/png;base64," + base64.b64encode(png(width, height, rows)).decode()


def box(left, top, right, bottom):
    return {(x, y) for x in range(left, right) for y in range(top, bottom)}


def request(object_url, paste_url, object_image=22, paste_image=0, **extra):
    body = {"object": [object_image, object_url], "paste": [paste_image, paste_url], "key": [],
            "model": "dcgan-celeba32", "layer": 3, "rank": 1, "solver": "direct"}
    body.update(extra)
    return json.dumps(body) + "\n"


def main():
    good = mask_url(32, 32, box(8, 10, 24, 16))

    write("pickle_os_system.pt", call_pickle("os", "system", "echo the pickle ran code"))
    write("pickle_builtins_eval.pt", stored_zip([("archive/data.pkl", call_pickle("builtins", "eval", "1+1"))]))
    write("pickle_subprocess_in_legacy.pt", legacy_header() +
          call_pickle("subprocess", "check_output", "id"))
    write("zip_bomb_deflate.pt", zip_bomb())
    write("zip_lying_size.pt", zip_lying_size())
    write("zip_tensor_past_storage.pt", zip_storage_past_end())
    write("legacy_lying_count.pt", legacy_lying_count())

    write("safetensors_huge_header.safetensors", safetensors({}, header_size=1 << 60))
    write("safetensors_lying_offsets.safetensors",
          safetensors({"w": {"dtype": "F32", "shape": [1024, 1024], "data_offsets": [0, 4 << 20]}}, float_bytes([1, 2])))
    write("safetensors_shape_overflow.safetensors",
          safetensors({"w": {"dtype": "F32", "shape": [1 << 32, 1 << 32, 1 << 32], "data_offsets": [0, 8]}},
                      float_bytes([1, 2])))
    write("tiny_nan.safetensors", tiny_generator(math.nan))
    write("tiny_nan.json", tiny_card("tiny_nan.safetensors"))
    write("tiny_inf.safetensors", tiny_generator(math.inf))
    write("tiny_inf.json", tiny_card("tiny_inf.safetensors"))
    write("patch_inf.safetensors", patch_with(math.inf))
    write("patch_other_model.safetensors", patch_with(0.5))

    write("request_empty_mask.json", request(good, mask_url(32, 32, set())))
    write("request_mask_too_large.json", request(good, mask_url(8193, 1, {(0, 0)})))
    write("request_mask_speck.json", request(good, mask_url(256, 256, {(100, 100)})))
    write("request_image_too_large.json", request(good, good, object_image=5000000000))
    write("request_negative_image.json", request(good, good, paste_image=-1))
    write("request_broken_base64.json", request(good, "data:image/png;base64,iVBORw0K!!!!"))
    write("request_not_png.json", request(good, "data:image/png;base64," + base64.b64encode(b"GIF89a....").decode()))
    write("request_truncated_png.json", request(good, good[:120]))
    write("request_jpeg_url.json", request(good, "data:image/jpeg;base64,/9j/4AAQSkZJRg=="))
    write("request_rank_huge.json", request(good, good, rank=100000))
    # mask_inflate_bomb.png came from the mask URL fuzzer: a 256x256 PNG of 851 bytes whose
    # compressed data inflates without end, so an unbounded decoder allocates gigabytes.
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mask_inflate_bomb.png"), "rb") as bomb:
        bomb_url = "data:image/png;base64," + base64.b64encode(bomb.read()).decode()
    write("request_png_inflate_bomb.json", request(good, bomb_url))


if __name__ == "__main__":
    main()
