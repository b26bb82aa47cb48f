"""`sauce_jax.preprocess` against transformers' CLIPImageProcessor (PIL backend) on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import sauce_jax
from sauce_jax.image_processor import PreprocessConfig

skdata = pytest.importorskip("skimage.data")
from transformers import CLIPImageProcessorPil  # noqa: E402

# Real photographs shipped with scikit-image: square, landscape, odd widths, grayscale, RGBA.
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "camera", "logo"]
PROCESSORS = {
    "clip-224": dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
    "llava-336": dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
    "crop-larger-than-resize": dict(size={"shortest_edge": 30}, crop_size={"height": 41, "width": 37}),
    "fixed-size-bilinear": dict(size={"height": 64, "width": 48}, resample=2, do_center_crop=False,
                                image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]),
}


def reference(processor, image):
    if isinstance(image, np.ndarray) and image.ndim == 2:
        image = image[:, :, None]  # transformers takes grayscale arrays only with a channel axis
    return processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)


def ours(processor, image):
    cfg = PreprocessConfig.from_hf(processor.to_dict())
    return sauce_jax.preprocess(image, cfg)[0]


@pytest.mark.parametrize("proc", list(PROCESSORS))
@pytest.mark.parametrize("photo", PHOTOS)
def test_matches_clip_image_processor_on_photographs(photo, proc):
    processor = CLIPImageProcessorPil(**PROCESSORS[proc])
    array = getattr(skdata, photo)()
    for image in (Image.fromarray(array), array):  # PIL and numpy inputs
        expected = reference(processor, image)
        got = ours(processor, image)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_grayscale_variants_agree():
    processor = CLIPImageProcessorPil(**PROCESSORS["clip-224"])
    gray = skdata.camera()[:300, :420]  # non-square grayscale
    expected = reference(processor, Image.fromarray(gray))
    for image in (gray, gray[:, :, None], Image.fromarray(gray)):
        np.testing.assert_allclose(ours(processor, image), expected, rtol=0, atol=1e-5)


def test_reads_the_checkpoints_preprocessor_config(small_clip_dir, tmp_path):
    import shutil

    path, _ = small_clip_dir
    shutil.copytree(path, tmp_path / "ckpt")
    processor = CLIPImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32},
                                      image_mean=[0.1, 0.2, 0.3], image_std=[0.9, 0.8, 0.7])
    processor.save_pretrained(tmp_path / "ckpt")
    encoder = sauce_jax.load_encoder(tmp_path / "ckpt")
    image = skdata.chelsea()
    np.testing.assert_allclose(sauce_jax.preprocess([image], encoder)[0], reference(processor, image), atol=1e-5)


def test_batch_of_mixed_sizes():
    cfg = PreprocessConfig.for_image_size(64)
    batch = sauce_jax.preprocess([skdata.astronaut(), skdata.coffee(), skdata.camera()], cfg)
    assert batch.shape == (3, 64, 64, 3)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 2), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3, 1), np.uint8), "shape"),
        ("cat.png", "PIL image or a numpy array"),
    ],
)
def test_bad_images_raise_input_error(bad, match):
    with pytest.raises(sauce_jax.InputError, match=match):
        sauce_jax.preprocess([bad], PreprocessConfig())


def test_empty_batch_raises():
    with pytest.raises(sauce_jax.InputError, match="no images"):
        sauce_jax.preprocess([], PreprocessConfig())
