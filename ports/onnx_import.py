"""DINOv2 weights from an ONNX export of transformers' `Dinov2Model` (alone or under a head).

`torch.onnx.export` keeps a parameter's name when the graph uses the tensor as it is
(layernorms, biases, LayerScale, the class token, the patch convolution), but a Linear
weight enters the graph transposed, as a new initializer named after nothing
(`onnx::MatMul_1966`), and the position table is split into an unnamed class row and an
unnamed patch grid that a `Resize` node resamples to the input size. This module recovers a
checkpoint in `save_pretrained` layout from such a graph:

- named initializers are taken by name (under the prefix that holds the patch convolution,
  e.g. `backbone.`; everything outside it, such as a task head, is listed as ignored);
- the graph is walked in topological order, block by block, from each layernorm's named
  bias: the three MatMuls that read norm1's output are told apart by where their outputs go
  (the query is the left operand of the score MatMul, the key the right one, the value the
  right operand of the MatMul that reads the softmax), then the output projection, the
  LayerScale, norm2, and the MLP (one MatMul, or SwiGLU's gate and up, the gate being the
  one that goes through a Sigmoid); every weight's shape is checked as it is taken, and a
  bias that names its layer must name the same layer the structure says;
- the class and patch position rows are found around the `Resize` node, whose attributes
  must be torch's bicubic (`half_pixel`, a = -0.75), which `sauce_jax.ports.dinov2` reproduces.

The head count, layernorm epsilon and MLP activation are read from the graph too, so
nothing but the .onnx file is needed. Anything the walk does not find where a DINOv2 export
has it raises `CheckpointError` naming the node or tensor. `onnx` is an optional extra
(`pip install 'sauce-jax[onnx]'`).
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from sauce_jax.ports import dinov2
from sauce_jax.errors import CheckpointError

# Nodes that move a tensor (data input first) or shift/scale it by a constant without mixing
# tokens: walked through when following a projection's output to the attention MatMuls.
_MOVE_OPS = {"Reshape", "Transpose", "Cast", "Identity", "Dropout", "Squeeze", "Unsqueeze"}
_CONSTANT_OPS = {"Mul", "Add", "Div", "Sub"}
# What the MLP activation decomposes into, by transformers' hidden_act.
_ACTIVATION_OPS = (({"Erf"}, "gelu"), ({"Tanh"}, "gelu_pytorch_tanh"))


@dataclasses.dataclass(frozen=True)
class OnnxImport:
    """What `read_onnx_dinov2` found: a checkpoint in `save_pretrained` layout and the graph's facts."""

    tensors: dict  # saved-layout name -> array (PyTorch layout), prefix removed
    hf_config: dict  # a transformers Dinov2Config dict matching the tensors
    prefix: str  # where the DINOv2 model sat in the graph ("backbone.", "")
    input_size: int | None  # the square input side the graph fixes, None when dynamic
    input_name: str  # the graph input that takes NCHW pixels
    hidden_state_names: tuple[str, ...]  # graph tensors equal to hidden_states[0..L]
    last_hidden_state_name: str  # graph tensor equal to last_hidden_state (after the final layernorm)
    ignored: tuple[str, ...]  # named initializers outside the DINOv2 model (a head)
    resampled: bool  # positions come through the graph's Resize (torch's plain bicubic), not a named table


class _Graph:
    """Producers, consumers and constants of an ONNX graph, checked to be topologically sorted."""

    def __init__(self, graph, origin: str):
        from onnx import numpy_helper

        self.origin = origin
        self.init = {t.name: t for t in graph.initializer}
        self._arrays: dict[str, np.ndarray] = {}
        self._numpy_helper = numpy_helper
        self.nodes = list(graph.node)
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list] = defaultdict(list)
        known = set(self.init) | {i.name for i in graph.input} | {""}
        made = {name for node in self.nodes for name in node.output}
        for node in self.nodes:
            for name in node.input:
                if name not in known and name not in made:
                    raise CheckpointError(f"{origin}: node {node.name!r} reads {name!r}, which no node, "
                                          "initializer or graph input provides")
                if name not in known:
                    raise CheckpointError(f"{origin}: node {node.name!r} reads {name!r} before any node makes it "
                                          "(the graph is not in topological order)")
                self.consumers[name].append(node)
            for name in node.output:
                self.producer[name] = node
                known.add(name)
        self.order = {id(node): i for i, node in enumerate(self.nodes)}

    def array(self, name: str) -> np.ndarray | None:
        """An initializer or a Constant node's value; None for a computed tensor."""
        if name in self._arrays:
            return self._arrays[name]
        value = None
        if name in self.init:
            value = self._numpy_helper.to_array(self.init[name])
        elif name in self.producer and self.producer[name].op_type == "Constant":
            from onnx import helper

            attr = self.producer[name].attribute[0]
            value = helper.get_attribute_value(attr)
            value = self._numpy_helper.to_array(value) if attr.name == "value" else np.asarray(value)
        if value is not None:
            self._arrays[name] = value
        return value

    def attr(self, node, name: str, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def only_consumer(self, tensor: str, op: str, what: str):
        nodes = [n for n in self.consumers[tensor] if n.op_type == op]
        if len(nodes) != 1:
            raise CheckpointError(f"{self.origin}: expected one {op} node reading {what} ({tensor!r}), found {len(nodes)}")
        return nodes[0]

    def reached(self, tensor: str):
        """The first non-pass-through nodes `tensor` flows into: [(node, input index)]."""
        out, stack, seen = [], [tensor], set()
        while stack:
            name = stack.pop()
            for node in self.consumers[name]:
                if (id(node), name) in seen:
                    continue
                seen.add((id(node), name))
                index = list(node.input).index(name)
                others = [i for i in node.input if i != name and i]
                moves = node.op_type in _MOVE_OPS and index == 0
                shifts = (node.op_type in _CONSTANT_OPS and (index == 0 or node.op_type in ("Mul", "Add"))
                          and all(self.array(i) is not None for i in others))
                if moves or shifts:
                    stack.extend(node.output)
                else:
                    out.append((node, index))
        return out


class _Walker:
    """Recovers the saved-layout tensors of one DINOv2 model from a graph, block by block."""

    def __init__(self, graph: _Graph, prefix: str):
        self.g = graph
        self.prefix = prefix
        self.tensors: dict[str, np.ndarray] = {}
        self.origin = graph.origin

    def fail(self, message: str):
        raise CheckpointError(f"{self.origin}: {message}")

    def named(self, name: str) -> np.ndarray:
        array = self.g.array(self.prefix + name) if self.prefix + name in self.g.init else None
        if array is None:
            self.fail(f"no initializer named {self.prefix + name!r}")
        return array

    # -- layernorms --------------------------------------------------------------------
    def layer_norm(self, name: str):
        """(input tensor, output tensor, epsilon) of the layernorm whose bias is `name`."""
        bias = self.prefix + name + ".bias"
        weight = self.prefix + name + ".weight"
        self.named(name + ".bias"), self.named(name + ".weight")
        for node in self.g.consumers[bias]:
            if node.op_type == "LayerNormalization":
                return node.input[0], node.output[0], float(self.g.attr(node, "epsilon", 1e-5))
        add = self.g.only_consumer(bias, "Add", f"layernorm bias {bias!r}")
        mul = self.g.producer.get(next(i for i in add.input if i != bias))
        if mul is None or mul.op_type != "Mul" or weight not in mul.input:
            self.fail(f"layernorm {self.prefix + name!r}: its bias is not added to x_hat * {weight!r}")
        div = self.g.producer.get(next(i for i in mul.input if i != weight))
        if div is None or div.op_type != "Div":
            self.fail(f"layernorm {self.prefix + name!r}: no normalization (Div) before the scale")
        sub, sqrt = self.g.producer.get(div.input[0]), self.g.producer.get(div.input[1])
        add_eps = self.g.producer.get(sqrt.input[0]) if sqrt is not None and sqrt.op_type == "Sqrt" else None
        if sub is None or sub.op_type != "Sub" or add_eps is None or add_eps.op_type != "Add":
            self.fail(f"layernorm {self.prefix + name!r}: not (x - mean) / sqrt(var + eps)")
        eps = [self.g.array(i) for i in add_eps.input if self.g.array(i) is not None]
        if len(eps) != 1 or np.asarray(eps[0]).size != 1:
            self.fail(f"layernorm {self.prefix + name!r}: no constant epsilon in node {add_eps.name!r}")
        # The graph stores float32: 1e-6 comes back as 9.99999997e-07; keep its shortest decimal.
        return sub.input[0], add.output[0], float(np.format_float_positional(np.float32(np.asarray(eps[0]).reshape(()))))

    # -- linear layers -----------------------------------------------------------------
    def projections(self, tensor: str, what: str):
        """MatMuls with a constant right operand that read `tensor`, in topological order."""
        nodes = [n for n in self.g.consumers[tensor] if n.op_type in ("MatMul", "Gemm")
                 and n.input[0] == tensor and self.g.array(n.input[1]) is not None]
        if not nodes:
            self.fail(f"no linear layer reads {what} ({tensor!r})")
        return sorted(nodes, key=lambda n: self.g.order[id(n)])

    def take_linear(self, node, saved: str, shape: tuple[int, int]):
        """Store MatMul `node`'s weight (and its bias) as `saved`.weight/.bias; returns the output tensor."""
        if node.op_type == "Gemm" and (self.g.attr(node, "transB", 0) or self.g.attr(node, "transA", 0)):
            self.fail(f"node {node.name!r}: transposed Gemm operands are not supported")
        kernel = self.g.array(node.input[1])  # [in, out]
        if kernel.ndim != 2 or tuple(kernel.shape) != tuple(shape):
            self.fail(f"{saved}: the weight {node.input[1]!r} of node {node.name!r} has shape "
                      f"{tuple(kernel.shape)}, expected {tuple(shape)} (in, out)")
        self.tensors[saved + ".weight"] = np.ascontiguousarray(kernel.T)  # torch layout (out, in)
        out = node.output[0]
        bias_name = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 else None
        if bias_name is None:
            adds = [n for n in self.g.consumers[out] if n.op_type == "Add"
                    and any(self.g.array(i) is not None and i != out for i in n.input)]
            if len(adds) == 1:
                bias_name = next(i for i in adds[0].input if i != out)
                out = adds[0].output[0]
        if bias_name is not None:
            bias = self.g.array(bias_name)
            if bias.shape != (shape[1],):
                self.fail(f"{saved}: bias {bias_name!r} has shape {tuple(bias.shape)}, expected ({shape[1]},)")
            if bias_name.endswith(".bias") and not self._same_layer(bias_name, saved):
                self.fail(f"the graph's structure makes {bias_name!r} the bias of {self.prefix + saved!r}")
            self.tensors[saved + ".bias"] = bias
        return out

    def _same_layer(self, bias_name: str, saved: str) -> bool:
        """Whether a bias's own name (either transformers layout) names the layer `saved`."""
        stem = bias_name.removeprefix(self.prefix).removesuffix("bias")
        key = saved + "."
        return stem in {key, *(key.replace(a, b) for a, b in dinov2._CURRENT_TO_SAVED),
                        *(key.replace(b, a) for a, b in dinov2._CURRENT_TO_SAVED)}

    # -- blocks ------------------------------------------------------------------------
    def block(self, i: int, d: int):
        """Recover block i; returns (hidden state i, hidden state i+1, eps, heads, mlp facts)."""
        p = f"encoder.layer.{i}"
        hidden, normed, eps = self.layer_norm(f"{p}.norm1")
        qkv = self.projections(normed, f"{p}.norm1's output")
        if len(qkv) != 3:
            self.fail(f"{p}: expected 3 linear layers (query, key, value) reading norm1, found {len(qkv)}")
        roles: dict[str, object] = {}
        for node in qkv:
            role = self.attention_role(node, p)
            if role in roles:
                self.fail(f"{p}: nodes {roles[role].name!r} and {node.name!r} both act as the {role}")
            roles[role] = node
        outs = {r: self.take_linear(roles[r], f"{p}.attention.attention.{r}", (d, d)) for r in ("query", "key", "value")}
        heads = self.head_count(outs["query"], d, p)
        context = self.context_matmul(outs["value"], p)
        o_nodes = [n for n, _ in self.g.reached(context.output[0]) if n.op_type in ("MatMul", "Gemm")]
        if len(o_nodes) != 1 or self.g.array(o_nodes[0].input[1]) is None:
            self.fail(f"{p}: no output projection after the attention node {context.name!r}")
        attn_out = self.take_linear(o_nodes[0], f"{p}.attention.output.dense", (d, d))
        after_scale1 = self.layer_scale(attn_out, f"{p}.layer_scale1", d)
        middle, normed2, _ = self.layer_norm(f"{p}.norm2")
        if self.g.producer.get(middle) is None or after_scale1 not in self.g.producer[middle].input:
            self.fail(f"{p}: norm2 does not read the residual sum after layer_scale1")
        mlp_out, act, swiglu, width = self.mlp(normed2, p, d)
        after_scale2 = self.layer_scale(mlp_out, f"{p}.layer_scale2", d)
        residual = [n for n in self.g.consumers[after_scale2] if n.op_type == "Add" and middle in n.input]
        if len(residual) != 1:
            self.fail(f"{p}: the MLP branch is not added back to the residual stream")
        return hidden, residual[0].output[0], eps, heads, (act, swiglu, width)

    def attention_role(self, node, p: str) -> str:
        """query / key / value from where the projection's output is consumed."""
        for target, index in self.g.reached(node.output[0]):
            if target.op_type != "MatMul":
                continue
            left = self.g.producer.get(target.input[0])
            while left is not None and left.op_type in ("Cast", "Dropout", "Identity"):
                left = self.g.producer.get(left.input[0])
            if left is not None and left.op_type == "Softmax":
                if index == 1:
                    return "value"
                continue
            return "query" if index == 0 else "key"
        self.fail(f"{p}: the output of {node.name!r} reaches no attention MatMul")

    def context_matmul(self, value: str, p: str):
        found = [n for n, index in self.g.reached(value) if n.op_type == "MatMul" and index == 1]
        if len(found) != 1:
            self.fail(f"{p}: the value projection feeds {len(found)} attention MatMuls, expected 1")
        return found[0]

    def head_count(self, query: str, d: int, p: str) -> int:
        """Heads from the Reshape that splits the query into [.., heads, head_dim]."""
        reshapes = [n for n in self.g.consumers[query] if n.op_type == "Reshape"]
        if not reshapes:
            self.fail(f"{p}: the query is not reshaped into heads")
        shape = self.g.array(reshapes[0].input[1])
        if shape is None:
            concat = self.g.producer.get(reshapes[0].input[1])
            last = self.g.array(concat.input[-1]) if concat is not None and concat.op_type == "Concat" else None
            shape = last
        head_dim = int(np.asarray(shape).reshape(-1)[-1]) if shape is not None else 0
        if head_dim <= 0 or d % head_dim:
            self.fail(f"{p}: cannot read the head size from node {reshapes[0].name!r} (got {head_dim}, width {d})")
        return d // head_dim

    def layer_scale(self, tensor: str, name: str, d: int) -> str:
        lam = self.named(name + ".lambda1")
        if lam.shape != (d,):
            self.fail(f"{self.prefix + name}.lambda1 has shape {tuple(lam.shape)}, expected ({d},)")
        muls = [n for n in self.g.consumers[tensor] if n.op_type == "Mul" and self.prefix + name + ".lambda1" in n.input]
        if len(muls) != 1:
            self.fail(f"{self.prefix + name}.lambda1 does not scale the branch output {tensor!r}")
        self.tensors[name + ".lambda1"] = lam
        return muls[0].output[0]

    def mlp(self, normed: str, p: str, d: int):
        nodes = self.projections(normed, f"{p}.norm2's output")
        if len(nodes) == 1:
            width = self.g.array(nodes[0].input[1]).shape[-1]
            hidden = self.take_linear(nodes[0], f"{p}.mlp.fc1", (d, width))
            down, ops = self.next_linear(hidden, p)
            act = next((a for need, a in _ACTIVATION_OPS if need <= ops), None)
            if act is None:
                self.fail(f"{p}: MLP activation not recognised from ops {sorted(ops)} (exact or tanh GELU are)")
            out = self.take_linear(down, f"{p}.mlp.fc2", (width, d))
            return out, act, False, width
        if len(nodes) != 2:
            self.fail(f"{p}: expected 1 (MLP) or 2 (SwiGLU) linear layers reading norm2, found {len(nodes)}")
        gated = [n for n in nodes if any(t.op_type == "Sigmoid" for t, _ in self.g.reached(n.output[0]))]
        if len(gated) != 1:
            self.fail(f"{p}: cannot tell SwiGLU's gate from its up projection (no single Sigmoid path)")
        gate, up = gated[0], next(n for n in nodes if n is not gated[0])
        width = self.g.array(gate.input[1]).shape[-1]
        hidden = self.take_linear(gate, f"{p}.mlp.gate_proj", (d, width))
        self.take_linear(up, f"{p}.mlp.up_proj", (d, width))
        down, _ = self.next_linear(hidden, p)
        return self.take_linear(down, f"{p}.mlp.down_proj", (width, d)), "silu", True, width

    def next_linear(self, tensor: str, p: str):
        """The first constant-weight MatMul downstream of `tensor`, and the op types on the way."""
        ops, found, frontier, seen = set(), [], [tensor], set()
        while frontier:
            name = frontier.pop()
            for node in self.g.consumers[name]:
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if node.op_type in ("MatMul", "Gemm") and self.g.array(node.input[1]) is not None:
                    found.append(node)
                    continue
                ops.add(node.op_type)
                frontier.extend(node.output)
        if len(found) != 1:
            self.fail(f"{p}: expected one MLP output layer after {tensor!r}, found {len(found)}")
        return found[0], ops

    # -- embeddings --------------------------------------------------------------------
    def positions(self, d: int) -> np.ndarray:
        """The full [1, 1 + grid^2, D] position table, named or rebuilt around the Resize node."""
        name = self.prefix + "embeddings.position_embeddings"
        if name in self.g.init:
            return self.g.array(name)
        resizes = [n for n in self.g.nodes if n.op_type == "Resize"
                   and self.trace_back(n.input[0], self.g.array) is not None]
        if len(resizes) < 1:
            self.fail(f"no {name!r} and no Resize node of a constant position grid")
        resize = min(resizes, key=lambda n: self.g.order[id(n)])
        facts = {"mode": self.g.attr(resize, "mode"), "coordinate_transformation_mode":
                 self.g.attr(resize, "coordinate_transformation_mode", "half_pixel"),
                 "cubic_coeff_a": self.g.attr(resize, "cubic_coeff_a", -0.75),
                 "antialias": self.g.attr(resize, "antialias", 0)}
        want = {"mode": "cubic", "coordinate_transformation_mode": "half_pixel", "cubic_coeff_a": -0.75, "antialias": 0}
        for key, value in want.items():
            if facts[key] != value:
                self.fail(f"Resize node {resize.name!r} has {key}={facts[key]!r}; only torch's bicubic "
                          f"({key}={value!r}) is implemented")
        grid = self.trace_back(resize.input[0], self.g.array).reshape(-1, d)  # [grid^2, D]
        concat = None
        tensor = resize.output[0]
        for _ in range(8):  # Cast / Transpose / Reshape between the Resize and the Concat
            users = [n for n in self.g.consumers[tensor] if n.op_type != "Shape"]
            if len(users) != 1:
                break
            if users[0].op_type == "Concat":
                concat = users[0]
                break
            tensor = users[0].output[0]
        cls = [self.g.array(i) for i in concat.input if self.g.array(i) is not None] if concat is not None else []
        if len(cls) != 1 or cls[0].size != d:
            self.fail(f"no constant class-token position concatenated after Resize node {resize.name!r}")
        if int(round(np.sqrt(grid.shape[0]))) ** 2 != grid.shape[0]:
            self.fail(f"the position grid of Resize node {resize.name!r} has {grid.shape[0]} rows, not a square")
        return np.concatenate([cls[0].reshape(1, d), grid])[None]  # [1, 1 + grid^2, D]

    def trace_back(self, tensor: str, constant):
        """Follow Cast/Transpose/Reshape back to a constant; None if the chain meets anything else."""
        for _ in range(8):
            value = constant(tensor)
            if value is not None:
                return value
            node = self.g.producer.get(tensor)
            if node is None or node.op_type not in ("Cast", "Transpose", "Reshape", "Identity"):
                return None
            tensor = node.input[0]
        return None


def _mlp_ratio(d: int, width: int, swiglu: bool, origin: str) -> float:
    """An mlp_ratio for which transformers' width formula gives `width` (plain or SwiGLU)."""
    plain = lambda r: int(d * r)
    sizes = (lambda r: (int(plain(r) * 2 / 3) + 7) // 8 * 8) if swiglu else plain
    for ratio in (width / d, (width + 0.5) / d, width * 1.5 / d, *(k / 8 for k in range(1, 129))):
        if sizes(ratio) == width:
            return ratio
    raise CheckpointError(f"{origin}: MLP width {width} is not what any mlp_ratio gives for hidden size {d}")


def _load_proto(path: Path, origin: str):
    try:
        import onnx
    except ImportError as exc:
        raise CheckpointError(f"{origin}: reading ONNX needs the onnx extra: pip install 'sauce-jax[onnx]'") from exc
    if not path.is_file():
        raise CheckpointError(f"ONNX file {origin!r} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # a protobuf parse error, a truncated file, missing external data
        raise CheckpointError(f"{origin!r} is not a readable ONNX model: {exc}") from exc


def read_onnx_dinov2(path: str | os.PathLike) -> OnnxImport:
    """Recover a DINOv2 checkpoint (saved layout, PyTorch tensor layout) from an ONNX export."""
    path = Path(path).expanduser()
    origin = str(path)
    proto = _load_proto(path, origin)
    graph = _Graph(proto.graph, origin)
    anchor = "embeddings.patch_embeddings.projection.weight"
    prefixes = [name.removesuffix(anchor) for name in graph.init if name.endswith(anchor)]
    if len(prefixes) != 1:
        raise CheckpointError(f"{origin}: expected one initializer named '[prefix]{anchor}', found {len(prefixes)}; "
                              "is this an export of a transformers DINOv2 model?")
    prefix = prefixes[0]
    walker = _Walker(graph, prefix)
    conv = walker.named(anchor)
    d, channels, patch = int(conv.shape[0]), int(conv.shape[1]), int(conv.shape[2])
    walker.tensors[anchor] = conv
    walker.tensors["embeddings.patch_embeddings.projection.bias"] = walker.named("embeddings.patch_embeddings.projection.bias")
    walker.tensors["embeddings.cls_token"] = walker.named("embeddings.cls_token")
    registers = 0
    if prefix + "embeddings.register_tokens" in graph.init:
        walker.tensors["embeddings.register_tokens"] = walker.named("embeddings.register_tokens")
        registers = int(walker.tensors["embeddings.register_tokens"].shape[1])
    walker.tensors["embeddings.position_embeddings"] = positions = walker.positions(d)
    grid = int(round(np.sqrt(positions.shape[1] - 1)))

    layers = 0
    while prefix + f"encoder.layer.{layers}.norm1.bias" in graph.init:
        layers += 1
    if layers == 0:
        raise CheckpointError(f"{origin}: no initializer named {prefix + 'encoder.layer.0.norm1.bias'!r}")
    hidden_names, facts = [], set()
    previous = None
    for i in range(layers):
        hidden, out, eps, heads, mlp = walker.block(i, d)
        if previous is not None and hidden != previous:
            raise CheckpointError(f"{origin}: block {i} does not read the output of block {i - 1}")
        hidden_names.append(hidden)
        previous = out
        facts.add((eps, heads, mlp))
    if len(facts) != 1:
        raise CheckpointError(f"{origin}: blocks differ in epsilon, heads or MLP: {sorted(map(str, facts))}")
    (eps, heads, (act, swiglu, width)), = facts
    final_in, final_out, final_eps = walker.layer_norm("layernorm")
    if final_in != previous:
        raise CheckpointError(f"{origin}: the final layernorm does not read the last block's output")
    walker.tensors["layernorm.weight"] = walker.named("layernorm.weight")
    walker.tensors["layernorm.bias"] = walker.named("layernorm.bias")
    for i in range(layers):
        for norm in ("norm1", "norm2"):
            for part in ("weight", "bias"):
                walker.tensors[f"encoder.layer.{i}.{norm}.{part}"] = walker.named(f"encoder.layer.{i}.{norm}.{part}")
    if final_eps != eps:
        raise CheckpointError(f"{origin}: the final layernorm's epsilon {final_eps} differs from the blocks' {eps}")

    mlp_ratio = _mlp_ratio(d, width, swiglu, origin)
    hf_config = dict(model_type=dinov2.REGISTERS_TYPE if registers else dinov2.MODEL_TYPE, hidden_size=d,
                     num_hidden_layers=layers, num_attention_heads=heads, mlp_ratio=mlp_ratio, hidden_act=act,
                     layer_norm_eps=eps, image_size=grid * patch, patch_size=patch, num_channels=channels,
                     qkv_bias="encoder.layer.0.attention.attention.query.bias" in walker.tensors,
                     use_swiglu_ffn=swiglu, **({"num_register_tokens": registers} if registers else {}))
    inputs = [i for i in proto.graph.input if i.name not in graph.init]
    if len(inputs) != 1:
        raise CheckpointError(f"{origin}: expected one graph input (pixels), found {[i.name for i in inputs]}")
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in inputs[0].type.tensor_type.shape.dim]
    input_size = dims[2] if len(dims) == 4 and dims[2] is not None and dims[2] == dims[3] else None
    ignored = tuple(sorted(n for n in graph.init if not n.startswith(prefix) and "::" not in n))
    return OnnxImport(tensors=dinov2.saved_layout(walker.tensors), hf_config=hf_config, prefix=prefix,
                      input_size=input_size, input_name=inputs[0].name,
                      hidden_state_names=tuple(hidden_names) + (previous,), last_hidden_state_name=final_out,
                      ignored=ignored, resampled=prefix + "embeddings.position_embeddings" not in graph.init)


def load_onnx_dinov2(path: str | os.PathLike, *, dtype=jnp.float32, attention_impl: str = "auto"):
    """A `sauce_jax.ports.dinov2.Dinov2Model` with the weights of an ONNX export. Returns (model, OnnxImport)."""
    found = read_onnx_dinov2(path)
    cfg = dinov2.Dinov2Config.from_hf(found.hf_config)
    if found.resampled:  # what the graph computes, even for a registers model (whose torch code antialiases)
        cfg = dataclasses.replace(cfg, antialias=False)
    model, _ = dinov2.build(cfg, found.tensors, dtype=dtype, attention_impl=attention_impl,
                            origin=f"{path} (recovered from the ONNX graph)")
    return model, found
