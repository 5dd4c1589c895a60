"""``image_scale``: which value scale images reach the policy in, per camera, and the runtime guard.

Seed 004's bug: the camera gives uint8 0..255, the loader divides by 255, and the encoder (built
for 0..255 input) divides by 255 again, so it sees values ~255x too small. The dataset validator
classifies every camera's sampled decoded frames (RLDS: the encoded frames the stats pipeline
sampled; LeRobot: ``meta/info.json`` says video/image, which LeRobot's loader hands over as float
0..1) and flags a mixture with different scales, and a scale that, with ``model.image_input``,
means normalizing twice or never. ``check_image_batch`` is the same classification as a cheap
guard for live observation batches (min, max and dtype only).
"""

from __future__ import annotations

import io

import numpy as np

from stepnorm.validators.base import Finding, ValidationContext, validator

SCALES = ("uint8", "float_0_255", "float01", "float01_255", "float_minus1_1", "float_minus05_05", "imagenet",
          "blank", "other")
SCALE_LABELS = {
    "uint8": "uint8 0..255",
    "float_0_255": "float 0..255",
    "float01": "float 0..1",
    "float01_255": "float 0..1/255 (divided by 255 twice)",
    "float_minus1_1": "float -1..1",
    "float_minus05_05": "float -0.5..0.5",
    "imagenet": "ImageNet-standardized float",
    "blank": "constant (blank)",
    "other": "unrecognized range",
}
# Values within a 1/255-wide band are an image that was divided by 255 twice (seed 004 saw
# [-0.5, -0.496] at the encoder). A genuinely uniform float batch would read the same way.
_TWICE = 1.0 / 255.0
_TOL = 1e-3
# Bounds of ImageNet mean/std standardization: (0 - 0.485) / 0.229 and (1 - 0.406) / 0.225.
_IMAGENET_LO, _IMAGENET_HI = -2.2, 2.7
# What each model.image_input accepts at the encoder's input.
ACCEPTS = {
    "uint8": {"uint8", "float_0_255"},
    "float01": {"float01"},
    "float_minus1_1": {"float_minus1_1", "float_minus05_05"},
    "float_minus05_05": {"float_minus05_05"},
    "imagenet": {"imagenet", "float_minus1_1", "float_minus05_05"},
}
_NORMALIZED = ("float01", "float_minus1_1", "float_minus05_05", "imagenet")
# 0..255 in uint8 and in float is one value scale for mixing purposes.
_FAMILY = {"float_0_255": "uint8"}


def classify_ranges(lo, hi, is_float) -> np.ndarray:
    """Vectorized scale classification of value ranges: arrays ``lo``, ``hi``, ``is_float`` -> names.

    Only the range and whether the values are floats are used, so it is cheap enough for every
    batch. Integer arrays within 0..255 are ``uint8``; floats are matched against the known
    normalized scales, narrowest first; NaN gives ``other``.
    """
    lo, hi, is_float = np.broadcast_arrays(np.asarray(lo, np.float64), np.asarray(hi, np.float64),
                                           np.asarray(is_float, bool))
    span = hi - lo
    nonneg = lo >= -_TOL
    negative = lo < -_TOL
    conditions = [
        span == 0,
        ~is_float & (lo >= 0) & (hi <= 255),
        ~is_float,
        span <= _TWICE + 1e-9,
        nonneg & (hi <= 1 + _TOL),
        nonneg & (hi <= 255 + _TOL),
        negative & (lo >= -0.5 - _TOL) & (hi <= 0.5 + _TOL),
        negative & (lo >= -1 - _TOL) & (hi <= 1 + _TOL),
        (lo >= _IMAGENET_LO) & (hi <= _IMAGENET_HI),
    ]
    choices = ["blank", "uint8", "other", "float01_255", "float01", "float_0_255", "float_minus05_05",
               "float_minus1_1", "imagenet"]
    return np.select(conditions, choices, default="other")


def _is_float_dtype(dtype) -> bool:
    flag = getattr(dtype, "is_floating_point", None)  # torch.dtype
    if isinstance(flag, bool):
        return flag
    return np.dtype(dtype).kind == "f"


def check_image_batch(x, expect: str = "uint8", *, name: str = "images", allow_blank: bool = True) -> str:
    """Raise ValueError unless the batch ``x`` is at the scale ``expect`` (a ``model.image_input``).

    Cheap enough for every batch: one min, one max and the dtype (a torch tensor is reduced on its
    own device; anything else goes through ``np.asarray``). Returns the detected scale name.
    A constant batch (e.g. a black frame while a camera starts) passes when ``allow_blank``.
    """
    if expect not in ACCEPTS:
        raise ValueError(f"expect must be one of {', '.join(ACCEPTS)}, got {expect!r}")
    if hasattr(x, "detach"):  # torch: reduce on the tensor's device, copy two scalars
        lo, hi, dtype = float(x.min()), float(x.max()), x.dtype
    else:
        arr = np.asarray(x)
        if arr.size == 0:
            raise ValueError(f"{name}: empty batch")
        lo, hi, dtype = float(arr.min()), float(arr.max()), arr.dtype
    scale = str(classify_ranges(lo, hi, _is_float_dtype(dtype)))
    if scale in ACCEPTS[expect] or (scale == "blank" and allow_blank):
        return scale
    if scale == "float01_255":
        why = "; it was divided by 255 twice"
    elif expect == "uint8" and scale in _NORMALIZED:
        why = "; it is already normalized and the encoder will normalize it again"
    elif expect != "uint8" and scale in ("uint8", "float_0_255"):
        why = "; it was never normalized"
    else:
        why = ""
    raise ValueError(f"{name}: expected {expect} input but the batch looks like {SCALE_LABELS[scale]} "
                     f"(min {lo:.6g}, max {hi:.6g}, dtype {dtype}){why}")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The encodings the validator reads (what TFDS's Image feature and LeRobot's image datasets store).
_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def _decode(blob: bytes) -> np.ndarray:
    """One sampled frame as an array of its stored pixel values (raises if it does not decode)."""
    import png  # pypng
    from PIL import Image

    from stepnorm.samples import decode_frame

    raw = decode_frame(blob)
    if raw is not None:
        return raw
    if blob[:8] == _PNG_SIGNATURE and len(blob) > 24 and blob[24] == 16:
        # Pillow reads a 16-bit colour PNG as 8 bits per channel (it keeps the high byte); the
        # value range is what this validator is about, so 16-bit PNGs go through pypng.
        _, _, pixels, _ = png.Reader(bytes=blob).read_flat()
        return np.asarray(pixels, np.uint16)
    with Image.open(io.BytesIO(blob), formats=_FORMATS) as img:
        if img.mode in ("1", "P", "PA"):
            # Bit masks and palette indices are not pixel values: take the colours they stand for.
            has_alpha = img.mode == "PA" or "transparency" in img.info
            img = img.convert("RGBA" if has_alpha else "L" if img.mode == "1" else "RGB")
        return np.asarray(img)


def _decode_frames(frames: list[bytes]):
    """Decoded frames' (min, max, is_float, dtype) per frame, and how many failed to decode."""
    import png  # pypng

    stats, failed = [], 0
    for blob in frames:
        try:
            img = _decode(blob)
        except (OSError, ValueError, SyntaxError, png.Error):  # PIL.UnidentifiedImageError is an OSError
            failed += 1
            continue
        stats.append((float(img.min()), float(img.max()), img.dtype.kind == "f", str(img.dtype)))
    return stats, failed


def _row(ds, key, model_input, **fields) -> dict:
    scale = fields.get("scale")
    known = scale not in (None, "blank", "other")
    row = {"datasets": [ds.name], "dataset": ds.name, "domain": ds.domain, "key": key, "dims": [],
           "model_input": model_input, "frames": 0, "missing": 0, "blank_share": 0.0, "dtype": "",
           "range": "", "scale": scale, "scale_label": SCALE_LABELS.get(scale, ""), "source": "",
           "pipeline": f"{scale}->{model_input}" if known else None, "problem": ""}
    row.update(fields)
    row["label"] = f"{ds.name} {key}: {row['scale_label'] or row['problem']}"
    return row


def _lerobot_row(ds, key, model_input, loader_scale) -> dict:
    from stepnorm.sources.lerobot import lerobot_info

    feature = lerobot_info(ds.path)["features"].get(key)
    if feature is None:
        return _row(ds, key, model_input, missing=1, problem="no such feature in meta/info.json")
    dtype = str(feature.get("dtype"))
    if dtype in ("video", "image"):
        return _row(ds, key, model_input, scale=loader_scale, dtype=f"{dtype} (uint8 pixels)", range="0..255 stored",
                    source=f"meta/info.json dtype {dtype}; LeRobot's loader delivers {SCALE_LABELS[loader_scale]}")
    return _row(ds, key, model_input, scale="other", dtype=dtype, range="unknown",
                source="meta/info.json (not an image dtype)")


def _sample_row(ds, key, model_input, frames: list[bytes]) -> dict:
    if not frames:
        return _row(ds, key, model_input, missing=1, problem="no sampled frames in the artifact")
    stats, failed = _decode_frames(frames)
    if not stats:
        return _row(ds, key, model_input, missing=1, frames=len(frames),
                    problem=f"none of {len(frames)} sampled frames decodes as JPEG/PNG/GIF/BMP")
    lo = min(s[0] for s in stats)
    hi = max(s[1] for s in stats)
    is_float = any(s[2] for s in stats)
    blank = sum(s[0] == s[1] for s in stats) / len(stats)
    scale = str(classify_ranges(lo, hi, is_float))
    return _row(ds, key, model_input, scale=scale, frames=len(stats), blank_share=blank, missing=int(failed > 0),
                dtype=",".join(sorted({s[3] for s in stats})), range=f"[{lo:.6g}, {hi:.6g}]",
                source=f"{len(stats)} decoded frames", lo=lo, hi=hi,
                problem=f"{failed} of {len(frames)} sampled frames do not decode" if failed else "")


@validator("image_scale")
def image_scale(ctx: ValidationContext) -> list[Finding]:
    """Per camera: the scale images reach the policy in; mixed scales, double/never normalization."""
    params = ctx.params("image_scale")
    model_input = ctx.cfg.model.get("image_input", "uint8")
    loader_scale = params["lerobot_loader_scale"]
    if loader_scale not in SCALES:
        from stepnorm.errors import ConfigError

        raise ConfigError(ctx.cfg.path, f"validators.image_scale.lerobot_loader_scale must be one of {SCALES}")
    rows = []
    for ds in ctx.cfg.datasets:
        sample = None if ds.format == "lerobot" else ctx.sample(ds.name)
        for key in ds.image_keys:
            if ds.format == "lerobot":
                rows.append(_lerobot_row(ds, key, model_input, loader_scale))
            else:
                rows.append(_sample_row(ds, key, model_input, [] if sample is None else sample.images.get(key, [])))
    scales = [dict(r, scale_family=_FAMILY.get(r["scale"], r["scale"])) for r in rows if r["pipeline"] is not None]
    return ctx.expect("image_scale", "cameras", rows) + ctx.expect("image_scale", "scales", scales)


__all__ = ["ACCEPTS", "SCALES", "SCALE_LABELS", "check_image_batch", "classify_ranges", "image_scale"]
