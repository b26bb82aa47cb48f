"""Conversion rules shared by the ports: rename, transpose, and account for every tensor.

A port describes its checkpoint as a table of `Rule`s. Each rule pairs a transformers tensor
name template with the path of our parameter, written with the same `{field}` placeholders,
and a `Transform` that turns the PyTorch layout into ours (and back, for export). `convert`
applies the table to a checkpoint: every tensor is consumed by exactly one rule or matches an
ignore pattern, every parameter of our model is filled, every shape matches. Anything else
raises `CheckpointError` naming the tensor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from sauce_jax.errors import CheckpointError

Path = tuple  # a parameter path inside an nnx.State: ('encoder', 'layers', 0, 'mlp', 'fc1', 'kernel')


@dataclass(frozen=True)
class Transform:
    """A layout change from PyTorch to ours (`forward`) and back (`inverse`)."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
# torch.nn.Linear stores (out, in); we multiply x @ kernel with kernel (in, out).
LINEAR = Transform("linear", lambda a: a.T, lambda a: a.T)
# torch.nn.Conv2d stores (out, in, kh, kw); our patch kernels are (kh, kw, in, out), matching NHWC patches.
CONV2D = Transform(
    "conv2d", lambda a: np.transpose(a, (2, 3, 1, 0)), lambda a: np.transpose(a, (3, 2, 0, 1))
)


def with_prefix(rules: Iterable[Rule], prefix: str) -> tuple[Rule, ...]:
    """The same rules for a model stored under `prefix` ("vision_tower.", ...) in a checkpoint."""
    return tuple(Rule(prefix + r.source, r.target, r.transform) for r in rules)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    regex = "".join(f"(?P<{p[1:-1]}>[^.]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(regex)


@dataclass(frozen=True)
class Rule:
    """One row of a conversion table: `source` (transformers name) -> `target` (our path)."""

    source: str
    target: str
    transform: Transform = IDENTITY
    _source_re: re.Pattern = field(init=False, repr=False, compare=False)
    _target_re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_source_re", _template_regex(self.source))
        object.__setattr__(self, "_target_re", _template_regex(self.target))

    def match_source(self, name: str) -> str | None:
        m = self._source_re.fullmatch(name)
        return self.target.format(**m.groupdict()) if m else None

    def match_target(self, dotted: str) -> str | None:
        m = self._target_re.fullmatch(dotted)
        return self.source.format(**m.groupdict()) if m else None


def dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def parse_path(text: str) -> Path:
    return tuple(int(p) if p.isdigit() else p for p in text.split("."))


def source_name(rules: Iterable[Rule], path: Path) -> str:
    """The transformers tensor name that fills our parameter `path` (for messages and export)."""
    for rule in rules:
        name = rule.match_target(dotted(path))
        if name is not None:
            return name
    return "(no rule)"


def convert(
    tensors: Mapping[str, np.ndarray],
    rules: Iterable[Rule],
    expected: Mapping[Path, tuple[tuple[int, ...], np.dtype]],
    *,
    ignore: Iterable[str] = (),
    origin: str = "checkpoint",
) -> tuple[dict[Path, np.ndarray], list[str]]:
    """Map checkpoint tensors onto our parameter paths.

    Args:
      tensors: checkpoint name -> array, in PyTorch layout.
      rules: the port's table, with the checkpoint's prefixes already applied.
      expected: our parameter path -> (shape, dtype) of the abstract model.
      ignore: regexes of full checkpoint names that are deliberately not used.
      origin: how to name the checkpoint in error messages.

    Returns:
      (our path -> array cast to the expected dtype, sorted list of ignored names).
    """
    rules = list(rules)
    ignore_res = [re.compile(p) for p in ignore]
    params: dict[Path, np.ndarray] = {}
    filled_by: dict[Path, str] = {}
    ignored: list[str] = []
    for name in sorted(tensors):
        if any(r.fullmatch(name) for r in ignore_res):
            ignored.append(name)
            continue
        target = None
        for rule in rules:
            target = rule.match_source(name)
            if target is not None:
                break
        if target is None:
            raise CheckpointError(f"{origin}: unexpected tensor {name!r} (no conversion rule and not ignored)")
        path = parse_path(target)
        if path not in expected:
            raise CheckpointError(f"{origin}: tensor {name!r} maps to {target!r}, which the model does not have")
        if path in filled_by:
            raise CheckpointError(f"{origin}: tensors {filled_by[path]!r} and {name!r} both map to {target!r}")
        shape, dtype = expected[path]
        array = rule.transform.forward(np.asarray(tensors[name]))
        if tuple(array.shape) != tuple(shape):
            raise CheckpointError(
                f"{origin}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"{'which after the ' + rule.transform.name + ' transform is ' + str(tuple(array.shape)) + '; ' if rule.transform is not IDENTITY else ''}"
                f"the model expects {tuple(shape)} for {target!r}"
            )
        if not np.all(np.isfinite(array.astype(np.float32))):
            raise CheckpointError(f"{origin}: tensor {name!r} contains NaN or infinite values")
        params[path] = np.ascontiguousarray(array).astype(dtype, copy=False)
        filled_by[path] = name
    missing = [p for p in expected if p not in params]
    if missing:
        raise CheckpointError(
            f"{origin}: missing tensor {source_name(rules, missing[0])!r} "
            f"(for {dotted(missing[0])!r}; {len(missing)} missing in all)"
        )
    return params, ignored


def build_module(make, rules, tensors, *, ignore=(), origin="checkpoint"):
    """Create the module `make()` builds, with its parameters taken from `tensors`.

    The module is built abstractly (`nnx.eval_shape`: no random init, no memory), its
    parameter shapes and dtypes drive `convert`, and the converted arrays fill it.
    Returns (module, ignored tensor names).
    """
    import jax.numpy as jnp
    from flax import nnx

    abstract = nnx.eval_shape(make)
    graphdef, state = nnx.split(abstract)
    expected = {tuple(path): (var.shape, var.dtype) for path, var in nnx.to_flat_state(state)}
    params, ignored = convert(tensors, rules, expected, ignore=ignore, origin=origin)
    nested: dict = {}
    for path, array in params.items():
        node = nested
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(array)
    nnx.replace_by_pure_dict(state, nested)
    return nnx.merge(graphdef, state), ignored
