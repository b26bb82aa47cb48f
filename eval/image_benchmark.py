"""A labelled-image concept benchmark on a real vision encoder: the machinery that the emoji
benchmark (`sauce-jax experiment real`) and Fashion-MNIST (`experiment fashion`) share.

One run, on a dataset of labelled train and test images (each class a concept):

1. hidden state `layer` of every image (all tokens) goes through the project's grain pipeline
   (`EncoderSource`, unshuffled) into an on-disk activation cache (`CachedSource`): chunk by
   chunk, so an interrupted run keeps what it encoded;
2. an SAE is trained on every token of the training images' cached hidden states;
3. a linear probe (multinomial logistic regression, standardized) is fit on the untouched
   encoder's `pooler_output` (DINOv2: the layernormed class token) of the training images;
4. class by class, the test images' cached hidden states go through the intervention (eq. 6)
   and the blocks after `layer` (`VisionEncoder.pooled_from`: the same values as the hooked
   tower, at the cost of the last blocks), and the same probe reads them. Each class's
   per-image outcomes are saved as it completes (`parts/`), so a rerun resumes.

Per class c, with the paper's definitions (each rate counts only what the untouched encoder's
probe got right, so nothing is rewarded for forgetting what it never knew):
- `recall_before`: the probe's recall of c before any edit;
- `ua`: among c's test images the probe labelled c before, the share it no longer does;
- `ira`: among the other classes' test images the probe labelled right before, the share it
  still does under c's intervention;
- `ua_random`: `ua` for k matched-random features (`random_draws` seeded draws, averaged per
  image; `sauce_jax.scoring.control_sets`): each selected feature replaced by one drawn among
  the 10 unselected features nearest to it in mean activation on c's training images, same
  gamma: the control that shows it is the selected features, not any edit of k features as
  active on c, that carry c (the same definition as ConceptWorld's);
- `ua_no_contrast`, `ira_no_contrast`: the k features with the highest mean activation on c
  alone (eq. 4 without its second term): the control that shows what the contrast with the
  other classes buys (mainly IRA);
- `ua_minus_random`: the paired per-image difference `ua - ua_random`.

Every figure carries a 95% percentile bootstrap interval over test images (`bootstrap`
resamples; the mean over classes resamples each class's images, stratified). Figure 5 (the
training images each class's best features fire on most) is `figure5.png`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sauce_jax.errors import ConfigError, InputError
from sauce_jax.eval.conceptworld.runs import cached, check_same_run, say
from sauce_jax.eval.top_images import plot_image_rows, precision, top_activating


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """The settings every labelled-image benchmark shares."""

    image_size: int | None = None  # input pixels (a multiple of the patch size); None: the encoder's own
    layer: int = -2  # the hooked hidden state (LLaVA's layer)
    expansion: int = 8  # SAE features per input dimension
    architecture: str = "topk"
    sae_k: int = 32  # active features per token (topk / batchtopk)
    epochs: float = 10.0  # passes over the training tokens
    lr: float = 4e-4
    batch_size: int = 1024
    k: int = 64  # features per concept
    gamma: float = -0.5  # eq. 6
    mode: str = "reconstruct"  # eq. 6 as the paper applies it, or "delta" (keeps the SAE's error)
    probe_steps: int = 500
    random_draws: int = 10  # matched-random feature sets per class
    bootstrap: int = 1000  # resamples for the 95% intervals
    encode_batch: int = 64  # images per encoder call
    seed: int = 0

    def __post_init__(self):
        for name in ("k", "random_draws", "bootstrap", "probe_steps", "encode_batch", "expansion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.mode not in ("reconstruct", "delta"):
            raise ConfigError(f"mode {self.mode!r} is not 'reconstruct' or 'delta'")


@dataclasses.dataclass(frozen=True)
class LabelledImages:
    """A benchmark's data: train and test images (paths, PIL images or uint8 arrays) with labels
    [N] in 0..len(names)-1, and `shown`, the train images as Figure 5 draws them."""

    names: tuple[str, ...]
    train_x: Sequence[Any]
    train_y: np.ndarray
    test_x: Sequence[Any]
    test_y: np.ndarray
    shown: Callable[[int], Any] | None = None  # train index -> a picture for imshow (default: the image)

    def __post_init__(self):
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if len(x) != len(y) or len(x) == 0:
                raise InputError(f"{split}: {len(x)} images and {len(y)} labels (both must be equal and > 0)")
            missing = sorted(set(range(len(self.names))) - set(np.asarray(y).tolist()))
            if missing:
                raise InputError(f"{split} split has no image of class(es) {[self.names[i] for i in missing]}")
        if len(self.names) < 2:
            raise ConfigError(f"the benchmark needs at least 2 classes, got {list(self.names)}")


# ------------------------------------------------------------------------------ encoder side


def at_resolution(encoder, size: int | None):
    """The encoder taking `size` x `size` inputs: images are resized to exactly that (no crop)
    and the position embeddings resampled (DINOv2's `interpolate_pos_encoding`). A copy
    sharing the weights; `None` returns the encoder unchanged."""
    if size is None:
        return encoder
    cfg = encoder.config
    if cfg.model_type != "dinov2":
        raise ConfigError(f"image_size works with DINOv2 towers (they resample position embeddings), "
                          f"not {cfg.model_type!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < cfg.patch_size or size % cfg.patch_size:
        raise ConfigError(f"image_size {size!r} must be a positive multiple of the patch size {cfg.patch_size}")
    patches = (cfg.image_size // cfg.patch_size) ** 2
    new = encoder.with_hooks({})
    new.config = dataclasses.replace(cfg, image_size=size,
                                     num_tokens=cfg.num_tokens - patches + (size // cfg.patch_size) ** 2)
    new.preprocess_config = dataclasses.replace(encoder.preprocess_config, shortest_edge=None,
                                                resize_hw=(size, size), crop_hw=None)
    return new


def cached_hidden_states(encoder, images: Sequence[Any], layer: int, directory: str | Path, *,
                         encode_batch: int = 64, chunk_images: int = 1024, progress: bool = False) -> np.ndarray:
    """Hidden state `layer` of every image, [N, T, D] float32, in the images' order: read from
    the disk cache in `directory`, and what is missing encoded through the grain pipeline and
    stored chunk by chunk (a crash loses at most the chunk under way)."""
    from sauce_jax.train.activations import CachedSource, EncoderSource

    inner = EncoderSource(encoder, images, layer=layer, token="all", chunk_images=chunk_images,
                          encode_batch=encode_batch, shuffle=False, num_threads=4)
    source = CachedSource(inner, directory)
    t, d = encoder.config.num_tokens, encoder.config.hidden_size
    out = np.empty((len(images), t, d), np.float32)
    for index in range(source.num_chunks()):
        say(progress, f"  {Path(directory).name}: chunk {index + 1}/{source.num_chunks()}")
        acts = source.chunk(0, index)
        start = index * chunk_images
        n = min(chunk_images, len(images) - start)
        if len(acts) != n * t:
            raise InputError(f"{len(inner.skipped)} image(s) could not be read (first: {min(inner.skipped)}); "
                             "every image of a benchmark must be readable")
        out[start:start + n] = acts.reshape(n, t, d)
    return out


def pooled(encoder, hidden: np.ndarray, layer: int, hook=None, *, rows: np.ndarray | None = None,
           ids: np.ndarray | None = None, batch: int = 256) -> np.ndarray:
    """`pooler_output` [R, D] of cached hidden states [N, T, D] at `layer` (the images `rows`
    [R], default all), with an optional intervention hook (fn, InterventionArgs) at `layer`;
    `ids` [R, k] gives each row its own feature set. Batches are padded to one shape, so one
    compiled function serves every set and every control."""
    import jax.numpy as jnp

    from sauce_jax.encoder import pad_batch

    rows = np.arange(len(hidden)) if rows is None else np.asarray(rows)
    out = []
    for start in range(0, len(rows), batch):
        part = rows[start:start + batch]
        hooks = None
        if hook is not None:
            fn, args = hook
            if ids is not None:
                args = args._replace(feature_ids=jnp.asarray(pad_batch(ids[start:start + batch], batch)))
            hooks = {layer: (fn, args)}
        out.append(np.asarray(encoder.pooled_from(pad_batch(hidden[part], batch), layer, hooks=hooks))[:len(part)])
    return np.concatenate(out) if out else np.zeros((0, encoder.config.hidden_size), np.float32)


def image_features(sae, hidden: np.ndarray, batch: int = 256) -> np.ndarray:
    """Per-image SAE activations [N, d_sae]: the mean over an image's tokens (what
    `sauce_jax.scoring.image_activations` computes with token "all"), from cached [N, T, D]."""
    import jax
    import jax.numpy as jnp

    from sauce_jax.sae import encode

    run = jax.jit(lambda p, x: encode(p, x, sae.config).mean(axis=1))
    return np.concatenate([np.asarray(run(sae.params, jnp.asarray(hidden[i:i + batch])))
                           for i in range(0, len(hidden), batch)])


# ------------------------------------------------------------------------------ probe and stats


def fit_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *, steps: int = 500, l2: float = 1e-3):
    """Multinomial logistic regression on standardized features: returns probe(x) -> labels."""
    import jax
    import jax.numpy as jnp
    import optax

    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = jnp.asarray((x - mean) / std)  # [N, D]
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros(num_classes)}
    optimizer = optax.adam(0.05)

    def loss(p):
        logits = xs @ p["w"] + p["b"]  # [N, C]
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y)).mean() + l2 * (p["w"] ** 2).sum()

    @jax.jit
    def step(p, state):
        grads = jax.grad(loss)(p)
        updates, state = optimizer.update(grads, state)
        return optax.apply_updates(p, updates), state

    state = optimizer.init(params)
    for _ in range(steps):
        params, state = step(params, state)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    return lambda feats: np.argmax(((feats - mean) / std) @ w + b, axis=-1)


def interval(groups: Sequence[np.ndarray], resamples: int = 1000, seed: int = 0) -> dict:
    """The mean over groups of each group's mean of per-image values, with a 95% percentile
    bootstrap interval that resamples the images of every group (stratified).

    One group: a class's own figure; one group per class: the macro mean over classes. Empty
    groups are left out; with none left, value and interval are None."""
    groups = [np.asarray(g, np.float64) for g in groups if len(g)]
    n = sum(len(g) for g in groups)
    if not groups:
        return {"value": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for g in groups:
        means += g[rng.integers(0, len(g), (resamples, len(g)))].mean(axis=1)
    means /= len(groups)
    lo, hi = np.percentile(means, [2.5, 97.5])
    value = float(np.mean([g.mean() for g in groups]))
    return {"value": round(value, 4), "lo": round(float(lo), 4), "hi": round(float(hi), 4), "n": int(n)}


# ------------------------------------------------------------------------------ the run

METRICS = ("recall_before", "ua", "ua_random", "ua_minus_random", "ua_no_contrast", "ira", "ira_no_contrast")


def _sae(out: Path, acts: np.ndarray, config: BenchmarkConfig, layer: int, benchmark: str, progress: bool):
    """The SAE on every training token, in `out/sae_run` (trained once, resumed, then loaded)."""
    from sauce_jax.train import TrainConfig, train_or_load

    cfg = TrainConfig(lr=config.lr, batch_size=min(config.batch_size, len(acts)), epochs=config.epochs,
                      seed=config.seed, log_every=50, checkpoint_every=500, sparse_decode=config.architecture != "standard")
    return train_or_load(out / "sae_run", activations=acts, expansion=config.expansion, train_config=cfg,
                         architecture=config.architecture, k=config.sae_k if config.architecture != "standard" else None,
                         progress=progress, metadata={"layer": layer, "token": "all", "benchmark": benchmark})


def run(out_dir: str | Path, encoder, data: LabelledImages, config: BenchmarkConfig, *, benchmark: str,
        describe: dict | None = None, progress: bool = True) -> dict:
    """Run the benchmark on `data`; write `results.json`, `results.md` and `figure5.png` to
    `out_dir` and return the results. A rerun on the same folder and config resumes."""
    from sauce_jax.intervention import intervention_args, make_hook
    from sauce_jax.scoring import FeatureSet, control_sets, select_one_vs_rest

    out = Path(out_dir)
    check_same_run(out, benchmark, config)
    encoder = at_resolution(encoder, config.image_size)
    layer = encoder.layer_index(config.layer)
    names = data.names
    train_y, test_y = np.asarray(data.train_y), np.asarray(data.test_y)
    cache = out / "cache"
    say(progress, f"hidden state {layer} of {len(data.train_x)} train and {len(data.test_x)} test images "
                  f"at {encoder.config.image_size} px -> {cache}")
    train_h = cached_hidden_states(encoder, data.train_x, layer, cache / "train", encode_batch=config.encode_batch,
                                   progress=progress)  # [N, T, D]
    test_h = cached_hidden_states(encoder, data.test_x, layer, cache / "test", encode_batch=config.encode_batch,
                                  progress=progress)  # [M, T, D]
    acts = train_h.reshape(-1, train_h.shape[-1])  # [N * T, D]
    sae = _sae(out, acts, config, layer, benchmark, progress)
    z = image_features(sae, train_h)  # [N, d_sae]

    say(progress, "linear probe on the untouched encoder's output")
    probe = fit_probe(pooled(encoder, train_h, layer), train_y, len(names), steps=config.probe_steps)
    before = probe(pooled(encoder, test_h, layer))  # [M]
    hook = make_hook(config.mode, sae.config)  # one function: only traced args change, one compile

    features = FeatureSet(concept="any", feature_ids=tuple(range(config.k)), scores=(0.0,) * config.k, layer=layer,
                          sae_fingerprint=sae.fingerprint(), gamma=config.gamma, token="all")
    base = (hook, intervention_args(sae, features, gamma=config.gamma, num_tokens=encoder.config.num_tokens))

    selected_sets = select_one_vs_rest(z, np.asarray(names)[train_y], names, config.k, layer=layer,
                                       sae_fingerprint=sae.fingerprint(), gamma=config.gamma, token="all")

    def one_class(label: int) -> dict:
        chosen = selected_sets[names[label]]
        controls = control_sets(chosen, z[train_y == label].mean(axis=0), config.random_draws, config.seed)
        selected = np.asarray(chosen.feature_ids)
        no_contrast = np.asarray(controls["no-contrast"].feature_ids)
        draws = [np.asarray(s.feature_ids) for s in controls["matched-random"]]
        known = np.flatnonzero((test_y == label) & (before == label))  # c's images the probe knew
        kept = np.flatnonzero((test_y != label) & (before == test_y))  # other images the probe knew
        everyone = np.concatenate([known, kept])
        # Every edit of this class in one stream of rows, each row with its own feature set.
        sets = [(selected, everyone), (no_contrast, everyone)] + [(draw, known) for draw in draws]
        rows = np.concatenate([r for _, r in sets])
        ids = np.concatenate([np.tile(np.asarray(f, np.int32), (len(r), 1)) for f, r in sets])
        labels = probe(pooled(encoder, test_h, layer, base, rows=rows, ids=ids))
        n, m = len(everyone), len(known)
        after, after_nc = labels[:n], labels[n:2 * n]
        random_forgot = (labels[2 * n:].reshape(config.random_draws, m) != label).mean(axis=0)  # [m]
        forgot = after[:m] != label
        return {"selected": [int(i) for i in selected], "no_contrast": [int(i) for i in no_contrast],
                "images": {"recall_before": (before[test_y == label] == label).astype(int),
                           "ua": forgot.astype(int), "ua_random": random_forgot,
                           "ua_minus_random": forgot - random_forgot,
                           "ua_no_contrast": (after_nc[:m] != label).astype(int),
                           "ira": (after[m:] == test_y[kept]).astype(int),
                           "ira_no_contrast": (after_nc[m:] == test_y[kept]).astype(int)}}

    parts = {}
    for label, name in enumerate(names):
        say(progress, f"class {label + 1}/{len(names)}: {name}")
        parts[name] = cached(out / "parts" / f"{label:03d}.json", lambda: one_class(label))

    results = {"benchmark": benchmark, "config": dataclasses.asdict(config), **(describe or {}),
               "encoder": encoder.config.source, "image_size": encoder.config.image_size, "layer": layer,
               "classes": list(names), "train_images": len(train_y), "test_images": len(test_y),
               "sae": {"d_sae": sae.config.d_sae, "tokens": len(acts), **sae_quality(sae, acts),
                       "dead_features": sae.metadata.get("dead_features")},
               "probe_test_accuracy": interval([before == test_y], config.bootstrap, config.seed),
               "concepts": {}, "mean": {}}
    for label, name in enumerate(names):
        images = parts[name]["images"]
        row = {key: interval([images[key]], config.bootstrap, config.seed) for key in METRICS}
        row.update(test_images=int((test_y == label).sum()), selected=parts[name]["selected"],
                   **top_images(z, train_y, label, parts[name]["selected"]))
        results["concepts"][name] = row
    results["mean"] = {key: interval([parts[n]["images"][key] for n in names], config.bootstrap, config.seed)
                       for key in METRICS}
    own = [r["top_image_precision"] for r in results["concepts"].values() if r["top_image_precision"] is not None]
    results["mean"]["top_image_precision"] = float(np.mean(own)) if own else None
    show = data.shown or (lambda i: data.train_x[i])
    plot_top_images(z, show, {n: parts[n]["selected"] for n in names}, out / "figure5.png")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results))
    return results


def top_images(z: np.ndarray, labels: np.ndarray, label: int, feature_ids, n_features: int = 3,
               n_images: int = 5) -> dict:
    """The training images each of the concept's best `n_features` features fires on most
    (z [N, d_sae], per image), and the share of them that belong to the concept."""
    tops = top_activating(z, feature_ids[:n_features], n_images)
    return {"top_images": tops, "top_image_precision": precision(tops, labels == label)}


def plot_top_images(z: np.ndarray, show: Callable[[int], Any], selected: dict, path: Path, n_features: int = 3,
                    n_images: int = 5) -> None:
    """The paper's Figure 5: per concept, the top-activating training images of its best features."""
    rows = [(f"{concept[:14]}\n#{f}", [show(i) for i in top])
            for concept, ids in selected.items()
            for f, top in top_activating(z, ids[:n_features], n_images).items()]
    plot_image_rows(rows, path)


def sae_quality(sae, acts: np.ndarray, batch: int = 4096) -> dict:
    """Explained variance, mean L0 and the fraction of dead features (never active) of `sae` on
    activations [N, D]."""
    import jax.numpy as jnp

    from sauce_jax.sae import forward

    sse, l0 = 0.0, 0.0
    fired = np.zeros(sae.config.d_sae, bool)
    for start in range(0, len(acts), batch):
        x = jnp.asarray(acts[start:start + batch])
        out = forward(sae.params, x, sae.config)
        sse += float(jnp.sum((x - out.x_hat) ** 2))
        l0 += float(jnp.sum(out.z > 0))
        fired |= np.asarray(jnp.any(out.z > 0, axis=0))
    sst = float(((acts - acts.mean(0)) ** 2).sum())
    return {"explained_variance": round(1.0 - sse / max(sst, 1e-30), 4), "l0": round(l0 / len(acts), 2),
            "dead_fraction": round(1.0 - float(fired.mean()), 4)}


def _cell(rate: dict) -> str:
    if rate["value"] is None:
        return "-"
    return f"{rate['value']:.2f} [{rate['lo']:.2f}, {rate['hi']:.2f}]"


COLUMNS = (("recall_before", "probe recall before"), ("ua", "UA"), ("ua_random", "UA, random features"),
           ("ua_minus_random", "UA - random"), ("ua_no_contrast", "UA, no contrast"), ("ira", "IRA"),
           ("ira_no_contrast", "IRA, no contrast"))


def table(results: dict) -> str:
    """The per-concept results as a Markdown table: each figure with its 95% interval, the
    counted test images in the UA column."""
    lines = ["| concept | test images | UA counted | " + " | ".join(title for _, title in COLUMNS) + " | top images own |",
             "|---|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for concept, r in results["concepts"].items():
        cells = " | ".join(_cell(r[key]) for key, _ in COLUMNS)
        own = "-" if r["top_image_precision"] is None else f"{r['top_image_precision']:.2f}"
        lines.append(f"| {concept} | {r['test_images']} | {r['ua']['n']} | {cells} | {own} |")
    m = results["mean"]
    lines.append(f"| mean | {results['test_images']} | {m['ua']['n']} | "
                 + " | ".join(_cell(m[key]) for key, _ in COLUMNS)
                 + f" | {'-' if m['top_image_precision'] is None else format(m['top_image_precision'], '.2f')} |")
    p = results["probe_test_accuracy"]
    return (f"Probe accuracy on the untouched encoder: {_cell(p)} over {p['n']} test images.\n\n"
            + "\n".join(lines) + "\n")
