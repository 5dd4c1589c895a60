"""The validators' library calls against independent computations.

``image_scale`` decodes sampled frames with Pillow (pypng for 16-bit PNG); the reference here is
TensorFlow's decoders, which it used before. ``drift``'s Jensen-Shannon distance is scipy's; the
reference here bins the values in plain Python and takes H(m) - (H(p) + H(q)) / 2 in base 2.
"""

import io
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from stepnorm.validators.drift import js_distance
from stepnorm.validators.image_scale import _decode_frames


# -- image_scale: Pillow vs TensorFlow ---------------------------------------------------------------
def _pil(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _frames():
    import tensorflow as tf

    rng = np.random.default_rng(7)
    rgb = rng.integers(20, 236, size=(24, 20, 3), dtype=np.uint8)
    palette = Image.fromarray(rgb).quantize(16)
    return {
        "png rgb8": tf.io.encode_png(rgb).numpy(),
        "png gray8": tf.io.encode_png(rgb[..., :1]).numpy(),
        "png rgba8": tf.io.encode_png(np.concatenate([rgb, rgb[..., :1] // 2], -1)).numpy(),
        "png rgb16": tf.io.encode_png(rng.integers(0, 65535, size=(16, 16, 3), dtype=np.uint16)).numpy(),
        "png gray16": tf.io.encode_png(rng.integers(300, 65000, size=(16, 16, 1), dtype=np.uint16)).numpy(),
        "png gray+alpha16": tf.io.encode_png(rng.integers(300, 65000, size=(16, 16, 2), dtype=np.uint16)).numpy(),
        "png palette": _pil(palette, "PNG"),
        "png palette+transparency": _pil(palette, "PNG", transparency=3),
        "png 1-bit": _pil(Image.fromarray(rgb[..., 0] > 128), "PNG"),
        "png blank": tf.io.encode_png(np.full((8, 8, 3), 9, np.uint8)).numpy(),
        "jpeg 4:2:0": tf.io.encode_jpeg(rgb).numpy(),
        "jpeg 4:4:4": tf.io.encode_jpeg(rgb, chroma_downsampling=False).numpy(),
        "jpeg gray": tf.io.encode_jpeg(rgb[..., :1], quality=95).numpy(),
        "gif": _pil(palette, "GIF"),
        "bmp": _pil(Image.fromarray(rgb), "BMP"),
    }


def _tf_decode(blob: bytes) -> np.ndarray:
    import tensorflow as tf

    if blob[:4] == b"\x89PNG" and blob[24] == 16:
        return tf.io.decode_png(blob, dtype=tf.uint16).numpy()
    if blob[:2] == b"\xff\xd8":
        # libjpeg's accurate integer IDCT, the one Pillow uses (TF's default is the fast, coarser one)
        return tf.io.decode_jpeg(blob, dct_method="INTEGER_ACCURATE").numpy()
    return tf.io.decode_image(blob, expand_animations=False).numpy()


@pytest.mark.parametrize("name", list(_frames()))
def test_frame_ranges_match_tensorflow(name):
    blob = _frames()[name]
    ref = _tf_decode(blob)
    (got,), failed = _decode_frames([blob])
    assert failed == 0
    assert got == (float(ref.min()), float(ref.max()), False, str(ref.dtype)), name


def test_undecodable_frames_are_counted():
    good = _frames()["png rgb8"]
    stats, failed = _decode_frames([b"not an image", good[:40], good, b"\xff\xd8\xff" + b"\0" * 10])
    assert (len(stats), failed) == (1, 3)


# -- drift: scipy's Jensen-Shannon distance vs a plain computation ------------------------------------
def _plain_js_divergence(a, b, bins):
    """The same shared bins (edges at the samples' 0.1/99.9 percentiles, outliers in the edge bins),
    counted and summed in plain Python floats."""
    lo = min(np.quantile(a, 0.001), np.quantile(b, 0.001))
    hi = max(np.quantile(a, 0.999), np.quantile(b, 0.999))

    def hist(x):
        counts = [0] * bins
        for v in x:
            v = min(max(float(v), lo), hi)
            counts[min(int((v - lo) / (hi - lo) * bins), bins - 1)] += 1
        return [c / len(x) for c in counts]

    def entropy(p):
        return -sum(x * math.log2(x) for x in p if x > 0)

    p, q = hist(a), hist(b)
    m = [(x + y) / 2 for x, y in zip(p, q)]
    return entropy(m) - (entropy(p) + entropy(q)) / 2


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_a=st.integers(5, 400), n_b=st.integers(5, 400),
       shift=st.floats(-3, 3), scale=st.floats(0.1, 5), bins=st.integers(4, 64))
def test_js_distance_matches_plain_computation(seed, n_a, n_b, shift, scale, bins):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n_a)
    b = rng.normal(shift, scale, size=n_b)
    d = js_distance(a, b, bins)
    assert 0.0 <= d <= 1.0
    # compare divergences: the square root would magnify rounding near 0
    assert d * d == pytest.approx(_plain_js_divergence(a, b, bins), abs=1e-12)


def test_js_distance_of_nearly_equal_samples_is_a_number():
    rng = np.random.default_rng(3)
    a = rng.normal(size=5000)
    for k in range(1, 20):  # histograms differing by one count: a divergence near rounding level
        b = a.copy()
        b[:k] = a[k : 2 * k]
        d = js_distance(a, b, 64)
        assert 0.0 <= d < 0.05
        assert d * d == pytest.approx(_plain_js_divergence(a, b, 64), abs=1e-12)
