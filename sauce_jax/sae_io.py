"""SAEs on disk in SAELens' format (SAELens >= 6), so either library reads what the other writes.

A directory holds two files:

- `cfg.json`: SAELens' config (`architecture`, `d_in`, `d_sae`, `dtype`, `device`,
  `apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`, `k` for topk,
  `metadata`). Our own config fields (architecture, k, loss coefficients) travel in
  `metadata["sauce_jax"]`, next to the SAE's free-form metadata, which SAELens keeps as is.
- `sae_weights.safetensors`: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_in],
  `b_dec` [d_in], and `threshold` [d_sae] for a JumpReLU SAE; float32 (or bfloat16).

Architectures map as follows:

    ours        SAELens     inference encoder, pre = (x - b_dec) @ W_enc + b_enc
    standard    standard    relu(pre)
    topk        topk        relu(pre) on the k largest pre per token, 0 elsewhere
    batchtopk   jumprelu    relu(pre) * (pre > threshold)

SAELens saves its own BatchTopK SAEs as JumpReLU SAEs, and the two rules agree: ours keeps
`relu(pre)` where `relu(pre) > threshold`; for threshold >= 0 that is `pre > threshold`, and
for threshold < 0 both keep relu(pre) everywhere (where pre <= threshold < 0, relu(pre) is 0
either way). Any JumpReLU SAE therefore loads as a `batchtopk` SAE with the same outputs.

Files SAELens wrote that our encoder formula does not cover directly are folded into an
exactly equivalent SAE on load (see `load_sae`); what cannot be folded is a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import uuid
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from sauce_jax.ports.weights import read_json, read_safetensors
from sauce_jax.errors import CheckpointError, ConfigError, InputError, SauceError
from sauce_jax.sae import SAE, SAEConfig, check_params, stored_config
from sauce_jax import sparsify_format

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
# SAELens' training writes the log10 feature density beside the weights under this name and key
# (sae_lens.constants.SPARSITY_FILENAME; SAETrainer.log_feature_sparsity: log10(density + 1e-10)).
SPARSITY_FILENAME = "sparsity.safetensors"
SPARSITY_KEY = "sparsity"
SPARSITY_EPS = 1e-10

# SAELens reads a cfg.json that names no sae_lens_version as its pre-6 layout and rebuilds the
# metadata from a fixed list of keys, which would drop ours: declare the layout we write.
SAELENS_FORMAT_VERSION = "6.0.0"

OUR_KEY = "sauce_jax"  # metadata key holding our config
_TO_SAELENS = {"standard": "standard", "topk": "topk", "batchtopk": "jumprelu"}
_FROM_SAELENS = {"standard": "standard", "topk": "topk", "jumprelu": "batchtopk"}
# SAELens turns metadata keys into attributes of an SAEMetadata object: these would shadow its
# methods there, and OUR_KEY is ours.
_RESERVED_METADATA_KEYS = frozenset({OUR_KEY, "get", "keys", "values", "items", "to_dict", "from_dict"})

_SAELENS_DTYPES = {"float32": "float32", "torch.float32": "float32", "bfloat16": "bfloat16",
                   "torch.bfloat16": "bfloat16", "float16": "float16", "torch.float16": "float16",
                   "float64": "float64", "torch.float64": "float64"}
_SAFETENSORS_CODES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}


# -- saving -------------------------------------------------------------------------------
FORMATS = ("saelens", "sparsify")


def save_sae(sae: SAE, directory: str | os.PathLike, *, format: str = "saelens") -> Path:
    """Write `sae` to `directory` (created if needed) as `cfg.json` + `sae_weights.safetensors`.

    `format="sparsify"` writes EleutherAI sparsify's layout instead (`cfg.json` +
    `sae.safetensors`, TopK SAEs only; see `sauce_jax.sparsify_format`), which
    `sparsify.Sae.load_from_disk(directory)` loads with the same outputs; our config and
    metadata ride along in cfg.json, so `load_sae` gives back the same SAE too. The other
    format's weights file, if the directory holds one, is removed.

    `sae_lens.SAE.load_from_disk(directory)` loads the result with the same encode/decode;
    `load_sae` restores the same params, `SAEConfig` and metadata. Weights are float32, or
    bfloat16 when every param is bfloat16. `sae.metadata` must hold JSON values (str, int,
    float, bool, None, lists, dicts with str keys) so that it comes back unchanged.

    Each file is written under a temporary name and moved into place with `os.replace`, so a
    crash never leaves a truncated file; an old `cfg.json` is removed before the new weights
    go in, so an interrupted overwrite can never pair old config with new weights.

    Raises InputError for params that do not fit the config or are not finite, ConfigError
    for metadata JSON cannot store (or an unknown format, or a non-TopK SAE for sparsify),
    CheckpointError when the directory cannot be written. Returns the directory.
    """
    if format not in FORMATS:
        raise ConfigError(f"save_sae: format {format!r} is not one of {FORMATS}")
    check_params(sae.params, sae.config, origin="save_sae")
    _check_metadata(sae.metadata)
    arrays = export_arrays(sae)
    for name, array in arrays.items():
        if not np.isfinite(array.astype(np.float32)).all():
            raise InputError(f"save_sae: parameter {name!r} holds NaN or infinite values; refusing to save it")
    if format == "sparsify":
        weights_name, other = sparsify_format.WEIGHTS_FILENAME, WEIGHTS_FILENAME
        arrays = sparsify_format.to_sparsify_arrays(arrays)
        header = _safetensors_header(arrays)
        ours = {"config": saelens_cfg(sae)["metadata"][OUR_KEY]["config"], "metadata": _json_metadata(sae.metadata),
                "weights_crc32": _crc32(header, arrays)}
        cfg = sparsify_format.sparsify_cfg(sae.config, ours)
    else:
        weights_name, other = WEIGHTS_FILENAME, sparsify_format.WEIGHTS_FILENAME
        header = _safetensors_header(arrays)
        cfg = saelens_cfg(sae, dtype=_dtype_name(arrays), weights_crc32=_crc32(header, arrays))

    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise CheckpointError(f"cannot save an SAE to {str(path)!r}: it or a parent is a file") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot create the SAE directory {str(path)!r}: {exc}") from exc
    _replace_files(path, {
        weights_name: lambda f: _write_safetensors(f, header, arrays),
        CFG_FILENAME: lambda f: f.write((json.dumps(cfg, indent=2) + "\n").encode()),
    })
    (path / other).unlink(missing_ok=True)  # so the directory holds one SAE, in one format
    return path


def save_sparsity(feature_density: np.ndarray, directory: str | os.PathLike) -> Path:
    """Write `sparsity.safetensors` as SAELens does: {"sparsity": log10(density + 1e-10)}, float32
    [d_sae], where density is each feature's share of tokens with a non-zero activation."""
    density = np.asarray(feature_density, np.float64).reshape(-1)
    arrays = {SPARSITY_KEY: np.ascontiguousarray(np.log10(density + SPARSITY_EPS).astype(np.float32))}
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    header = _safetensors_header(arrays)
    _replace_files(path, {SPARSITY_FILENAME: lambda f: _write_safetensors(f, header, arrays)})
    return path / SPARSITY_FILENAME


def load_sparsity(directory: str | os.PathLike) -> np.ndarray:
    """The log10 feature density of `directory`'s `sparsity.safetensors` (ours or SAELens')."""
    path = Path(directory).expanduser() / SPARSITY_FILENAME
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} does not exist")
    tensors = read_safetensors(path)
    if SPARSITY_KEY not in tensors:
        raise CheckpointError(f"{str(path)!r} has no {SPARSITY_KEY!r} tensor (found {sorted(tensors)})")
    return np.array(tensors[SPARSITY_KEY], np.float32)


def export_arrays(sae: SAE) -> dict[str, np.ndarray]:
    """The params as host arrays under SAELens' names: float32, or bfloat16 if all are."""
    host = {name: np.asarray(jax.device_get(value)) for name, value in sae.params.items()}
    bf16 = np.dtype(ml_dtypes.bfloat16)
    dtype = bf16 if all(a.dtype == bf16 for a in host.values()) else np.dtype(np.float32)
    return {name: np.ascontiguousarray(a.astype(dtype)) for name, a in sorted(host.items())}


def saelens_cfg(sae: SAE, *, dtype: str = "float32", weights_crc32: int | None = None) -> dict[str, Any]:
    """The `cfg.json` dict SAELens >= 6 reads for `sae`."""
    config = sae.config
    ours = {field: _json_metadata(value, f"config.{field}")
            for field, value in dataclasses.asdict(config).items() if field not in ("d_in", "d_sae")}
    block: dict[str, Any] = {"config": ours}
    if weights_crc32 is not None:
        block["weights_crc32"] = weights_crc32
    cfg: dict[str, Any] = {
        "architecture": _TO_SAELENS[config.architecture],
        "d_in": int(config.d_in),
        "d_sae": int(config.d_sae),
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,  # our encoder always subtracts b_dec
        "normalize_activations": "none",
        "reshape_activations": "none",
    }
    if config.is_topk:
        cfg["k"] = int(config.k)
        cfg["rescale_acts_by_decoder_norm"] = False
    cfg["sae_lens_version"] = SAELENS_FORMAT_VERSION
    cfg["metadata"] = {**_json_metadata(sae.metadata), OUR_KEY: block}
    return cfg


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        raise ConfigError(f"SAE metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        if not isinstance(key, str):
            raise ConfigError(f"SAE metadata key {key!r} is not a string; JSON object keys must be")
        if key in _RESERVED_METADATA_KEYS:
            raise ConfigError(f"SAE metadata key {key!r} is reserved (sauce-jax or SAELens use it); rename it")
    _json_metadata(metadata)


def _json_metadata(value: Any, where: str = "metadata") -> Any:
    """`value` with numpy scalars made plain; raises for what JSON would not give back unchanged."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, list):
        return [_json_metadata(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(f"SAE {where} has key {key!r}, which is not a string; JSON object keys must be")
        return {k: _json_metadata(v, f"{where}[{k!r}]") for k, v in value.items()}
    hint = " (it would come back as a list: store a list)" if isinstance(value, tuple) else ""
    raise ConfigError(
        f"SAE {where} is a {type(value).__name__}, which cfg.json cannot store unchanged{hint}; "
        "use str, int, float, bool, None, list or dict"
    )


def _dtype_name(arrays: dict[str, np.ndarray]) -> str:
    return "bfloat16" if next(iter(arrays.values())).dtype == np.dtype(ml_dtypes.bfloat16) else "float32"


def _safetensors_header(arrays: dict[str, np.ndarray]) -> bytes:
    """Length prefix + JSON header of a safetensors file holding `arrays` in order."""
    header, offset = {}, 0
    for name, array in arrays.items():
        header[name] = {"dtype": _SAFETENSORS_CODES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # pad as safetensors does, so the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def _array_bytes(array: np.ndarray) -> memoryview:
    # A uint8 view: ml_dtypes' bfloat16 has no buffer-protocol format of its own.
    return memoryview(array.view(np.uint8).reshape(-1))


def _crc32(header: bytes, arrays: dict[str, np.ndarray]) -> int:
    crc = zlib.crc32(header)
    for array in arrays.values():
        crc = zlib.crc32(_array_bytes(array), crc)
    return crc


def _write_safetensors(f: BinaryIO, header: bytes, arrays: dict[str, np.ndarray]) -> None:
    f.write(header)
    for array in arrays.values():
        _write_array(f, array)


def _write_array(f: BinaryIO, array: np.ndarray) -> None:
    f.write(_array_bytes(array))


def _replace_files(directory: Path, writers: dict[str, Callable[[BinaryIO], Any]]) -> None:
    """Write every file under a temporary name, then move them into place in order.

    Old copies of all but the first file are removed before anything is replaced, so while
    the files change, the later ones (cfg.json) are absent, never stale. A failure leaves no
    temporary file behind.
    """
    staged: dict[str, Path] = {}
    try:
        for name, write in writers.items():
            staged[name] = tmp = directory / f".{name}.tmp-{uuid.uuid4().hex[:12]}"
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        names = list(writers)
        # Remove the old config first: a crash below then leaves a directory without a
        # cfg.json (a clear error) rather than an old config next to new weights.
        for name in names[1:]:
            (directory / name).unlink(missing_ok=True)
        for name in names:
            os.replace(staged[name], directory / name)
            del staged[name]  # only once moved: a failed move still cleans up its temporary file
        _fsync_directory(directory)
    except OSError as exc:
        raise CheckpointError(f"could not write the SAE to {str(directory)!r}: {exc}") from exc
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- loading ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _FileConfig:
    """What `cfg.json` says, checked: the SAELens view plus our block when present."""

    config: SAEConfig
    saelens_architecture: str
    apply_b_dec_to_input: bool
    rescale_acts_by_decoder_norm: bool
    bfloat16: bool
    metadata: dict[str, Any]
    weights_crc32: int | None


def load_sae(directory: str | os.PathLike) -> SAE:
    """Read an SAE directory written by `save_sae`, by SAELens (`SAE.save_model`) or by
    EleutherAI sparsify (`Sae.save_to_disk`: `cfg.json` + `sae.safetensors`, TopK SAEs; see
    `sauce_jax.sparsify_format`). A sparsify run folder with one SAE per hookpoint is refused
    with the list of its SAE subfolders.

    SAELens `standard`, `topk` and `jumprelu` SAEs load (`jumprelu` as our `batchtopk`, whose
    inference rule is the same; see the module docstring). Two SAELens options are folded into
    the weights so that encode/decode give SAELens' outputs:

    - `apply_b_dec_to_input: false` (pre = x @ W_enc + b_enc): our encoder always subtracts
      b_dec, so b_enc becomes b_enc + b_dec @ W_enc, which gives the same pre-activations.
    - topk `rescale_acts_by_decoder_norm: true`: decoder row norms n are folded in as SAELens'
      `fold_W_dec_norm` does (W_enc *= n, b_enc *= n, W_dec /= n), which leaves the selected
      latents, z and the reconstruction unchanged.

    Params are bfloat16 when the cfg's dtype is bfloat16, float32 otherwise. A `jumprelu` SAE
    that sauce-jax did not write gets k from SAELens' BatchTopK training details when present,
    else k = d_sae; k plays no part at inference, where the threshold decides.

    Raises CheckpointError for a missing or empty directory, a missing, truncated or corrupt
    file, a missing, extra or misshapen tensor, or non-finite weights; ConfigError for a
    cfg.json value that is missing, malformed or not supported (another architecture,
    `normalize_activations` other than "none", hook_z reshaping).
    """
    path = _sae_directory(directory)
    cfg_path = path / CFG_FILENAME
    if not cfg_path.is_file():
        inner = sorted(p.name for p in path.iterdir() if (p / CFG_FILENAME).is_file())
        if inner:
            raise CheckpointError(f"{str(path)!r} holds several SAEs (one per hookpoint), not one: pass one of its "
                                  f"subfolders {inner[:10]}")
    cfg = read_json(cfg_path)
    if isinstance(cfg, dict) and sparsify_format.is_sparsify_cfg(cfg):
        return _load_sparsify(path, cfg)
    file_config = _parse_cfg(cfg, cfg_path)
    weights_path = path / WEIGHTS_FILENAME
    if not weights_path.is_file():
        present = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(f"{WEIGHTS_FILENAME} is missing from {str(path)!r} (found {present})")
    tensors = read_safetensors(weights_path)
    if file_config.weights_crc32 is not None:
        _check_crc32(weights_path, file_config.weights_crc32)
    arrays = _checked_arrays(tensors, file_config, weights_path)
    arrays = _fold_saelens_options(arrays, file_config)
    dtype = jnp.bfloat16 if file_config.bfloat16 else jnp.float32
    params = {name: jnp.asarray(array, dtype) for name, array in arrays.items()}
    return SAE(params=params, config=file_config.config, metadata=file_config.metadata)


def _load_sparsify(path: Path, cfg: dict[str, Any]) -> SAE:
    """`load_sae` for a directory in sparsify's layout."""
    config, ours = sparsify_format.parse_sparsify_cfg(cfg, repr(str(path / CFG_FILENAME)))
    weights_path = path / sparsify_format.WEIGHTS_FILENAME
    if not weights_path.is_file():
        present = sorted(p.name for p in path.iterdir())[:10]
        raise CheckpointError(f"{sparsify_format.WEIGHTS_FILENAME} is missing from {str(path)!r} (found {present})")
    tensors = read_safetensors(weights_path)
    crc = ours.get("weights_crc32") if ours else None
    if isinstance(crc, int):
        _check_crc32(weights_path, crc)
    bfloat16 = tensors["encoder.weight"].dtype == np.dtype(ml_dtypes.bfloat16) if "encoder.weight" in tensors else False
    arrays = sparsify_format.from_sparsify_tensors(tensors, config, str(weights_path))
    dtype = jnp.bfloat16 if bfloat16 else jnp.float32
    metadata = ours.get("metadata") if ours else None
    if not isinstance(metadata, dict):
        metadata = {"sparsify": {k: v for k, v in cfg.items() if k != sparsify_format.OUR_KEY}}
    return SAE(params={name: jnp.asarray(a, dtype) for name, a in arrays.items()}, config=config, metadata=metadata)


def _sae_directory(directory: str | os.PathLike) -> Path:
    path = Path(directory).expanduser()
    if not path.exists():
        raise CheckpointError(f"SAE directory {str(path)!r} does not exist")
    if not path.is_dir():
        raise CheckpointError(
            f"{str(path)!r} is a file; pass the SAE directory that holds {CFG_FILENAME} and {WEIGHTS_FILENAME}"
        )
    if not any(path.iterdir()):
        raise CheckpointError(f"SAE directory {str(path)!r} is empty (expected {CFG_FILENAME} and {WEIGHTS_FILENAME})")
    return path


def _parse_cfg(cfg: dict[str, Any], cfg_path: Path) -> _FileConfig:
    where = f"{str(cfg_path)!r}"
    metadata = cfg.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"{where}: 'metadata' must be a JSON object, got {type(metadata).__name__}")
    version = cfg.get("sae_lens_version") or metadata.get("sae_lens_version")
    architecture = cfg.get("architecture")
    if architecture is None and not version:
        # SAELens before 6 named no architecture: standard, or topk through activation_fn_kwargs.
        kwargs = cfg.get("activation_fn_kwargs") or {}
        architecture = "topk" if cfg.get("activation_fn") == "topk" and "k" in kwargs else "standard"
        cfg = {**cfg, "k": cfg.get("k", kwargs.get("k"))}
    if architecture not in _FROM_SAELENS:
        raise ConfigError(
            f"{where}: architecture {architecture!r} is not supported by sauce-jax "
            f"(supported SAELens architectures: {', '.join(_FROM_SAELENS)})"
        )
    d_in, d_sae = (_positive_int(cfg, key, where) for key in ("d_in", "d_sae"))

    normalize = cfg.get("normalize_activations", "none")
    if normalize in (None, False):  # pre-6 spellings of "none"
        normalize = "none"
    if normalize != "none":
        raise ConfigError(
            f"{where}: normalize_activations={normalize!r} is not supported (only 'none'); fold the "
            "normalization into the weights in SAELens (e.g. sae.fold_activation_norm_scaling_factor) and save again"
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ConfigError(f"{where}: reshape_activations={cfg['reshape_activations']!r} is not supported (only 'none')")
    activation_fn = cfg.get("activation_fn")
    if activation_fn not in (None, "relu", "topk"):
        raise ConfigError(f"{where}: activation_fn={activation_fn!r} is not supported (relu or topk)")
    dtype = cfg.get("dtype", "float32")
    if dtype not in _SAELENS_DTYPES:
        raise ConfigError(f"{where}: dtype {dtype!r} is not one of {sorted(set(_SAELENS_DTYPES.values()))}")

    ours = metadata.get(OUR_KEY)
    config = (_our_config(ours, architecture, cfg, d_in, d_sae, where) if ours is not None
              else _foreign_config(architecture, cfg, metadata, d_in, d_sae, where))
    crc = ours.get("weights_crc32") if isinstance(ours, dict) else None
    return _FileConfig(
        config=config,
        saelens_architecture=architecture,
        apply_b_dec_to_input=_bool(cfg, "apply_b_dec_to_input", True, where),
        rescale_acts_by_decoder_norm=(architecture == "topk"
                                      and _bool(cfg, "rescale_acts_by_decoder_norm", False, where)),
        bfloat16=_SAELENS_DTYPES[dtype] == "bfloat16",
        metadata={key: value for key, value in metadata.items() if key != OUR_KEY},
        weights_crc32=crc if isinstance(crc, int) else None,
    )


def _our_config(ours: Any, architecture: str, cfg: dict, d_in: int, d_sae: int, where: str) -> SAEConfig:
    """The SAEConfig save_sae stored, checked against the SAELens fields beside it."""
    stored = ours.get("config") if isinstance(ours, dict) else None
    config = stored_config(stored, d_in, d_sae, where, f"metadata[{OUR_KEY!r}]")
    expected = _TO_SAELENS[config.architecture]
    if expected != architecture:
        raise ConfigError(
            f"{where}: architecture {architecture!r} contradicts metadata[{OUR_KEY!r}], which says "
            f"{config.architecture!r} (saved as SAELens {expected!r})"
        )
    if architecture == "topk" and cfg.get("k") != config.k:
        raise ConfigError(f"{where}: k={cfg.get('k')!r} contradicts metadata[{OUR_KEY!r}], which says k={config.k}")
    return config


def _foreign_config(architecture: str, cfg: dict, metadata: dict, d_in: int, d_sae: int, where: str) -> SAEConfig:
    """Our SAEConfig for a file SAELens wrote: training-only fields take our defaults."""
    ours = _FROM_SAELENS[architecture]
    k = None
    if ours == "topk":
        k = cfg.get("k")
        if isinstance(k, bool) or not isinstance(k, int):
            raise ConfigError(f"{where}: a topk SAE needs an integer 'k', got {k!r}")
    elif ours == "batchtopk":
        details = metadata.get("training_architecture_details")
        trained_k = details.get("k") if isinstance(details, dict) else None
        if metadata.get("training_architecture") == "batchtopk" and isinstance(trained_k, (int, float)):
            k = min(max(int(round(trained_k)), 1), d_sae)  # SAELens' BatchTopK k is a float mean
        else:
            k = d_sae  # a JumpReLU SAE has no k; only our training would use one
    try:
        return SAEConfig(d_in=d_in, d_sae=d_sae, architecture=ours, k=k)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _positive_int(cfg: dict, key: str, where: str) -> int:
    if key not in cfg:
        raise ConfigError(f"{where} has no {key!r}")
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return value


def _bool(cfg: dict, key: str, default: bool, where: str) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key!r} must be true or false, got {value!r}")
    return value


def _check_crc32(path: Path, expected: int) -> None:
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    if crc != expected:
        raise CheckpointError(
            f"{str(path)!r} does not match the checksum in {CFG_FILENAME}: the file is corrupt, or it and "
            f"{CFG_FILENAME} come from different saves"
        )


def _checked_arrays(tensors: dict[str, np.ndarray], file_config: _FileConfig, path: Path) -> dict[str, np.ndarray]:
    """The tensors as float32 host arrays, checked for presence, shape and finiteness."""
    d_in, d_sae = file_config.config.d_in, file_config.config.d_sae
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if file_config.saelens_architecture == "jumprelu":
        expected["threshold"] = (d_sae,)
    tensors = dict(tensors)
    scale = tensors.pop("scaling_factor", None)  # old SAELens files carry an all-ones one
    if scale is not None and not np.all(np.asarray(scale, np.float32) == 1.0):
        raise ConfigError(f"{str(path)!r}: a finetuning 'scaling_factor' other than 1 is not supported")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise CheckpointError(
            f"{str(path)!r} holds unexpected tensor(s) {extra} for a SAELens {file_config.saelens_architecture!r} SAE "
            f"(expected {sorted(expected)})"
        )
    arrays = {}
    for name, shape in expected.items():
        if name not in tensors:
            raise CheckpointError(
                f"{str(path)!r} lacks tensor {name!r} (a SAELens {file_config.saelens_architecture!r} SAE needs "
                f"{', '.join(expected)})"
            )
        tensor = tensors[name]
        if tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{str(path)!r}: tensor {name!r} has shape {tuple(tensor.shape)}, but {CFG_FILENAME}'s "
                f"d_in={d_in}, d_sae={d_sae} need {shape}"
            )
        if not np.issubdtype(tensor.dtype, np.floating) and tensor.dtype != np.dtype(ml_dtypes.bfloat16):
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} has dtype {tensor.dtype}, expected floating point")
        array = np.array(tensor, np.float32)  # a copy: nothing keeps the file mapped
        if not np.isfinite(array).all():
            kind = "NaN" if np.isnan(array).any() else "infinite values"
            raise CheckpointError(f"{str(path)!r}: tensor {name!r} holds {kind}")
        arrays[name] = array
    return arrays


def _fold_saelens_options(arrays: dict[str, np.ndarray], file_config: _FileConfig) -> dict[str, np.ndarray]:
    """Turn the SAELens options our formula lacks into equivalent weights (see `load_sae`)."""
    arrays = dict(arrays)
    if not file_config.apply_b_dec_to_input:
        # SAELens: pre = x @ W_enc + b_enc. Ours: (x - b_dec) @ W_enc + b_enc'. Equal when
        # b_enc' = b_enc + b_dec @ W_enc (accumulated in float64 for the small vector).
        shift = arrays["b_dec"].astype(np.float64) @ arrays["W_enc"].astype(np.float64)
        arrays["b_enc"] = (arrays["b_enc"] + shift).astype(np.float32)
    if file_config.rescale_acts_by_decoder_norm:
        # SAELens' topk ranks pre * n and decodes z / n with n = ||W_dec rows||; multiplying
        # the encoder by n and dividing the decoder by n does both (its fold_W_dec_norm).
        norms = np.maximum(np.linalg.norm(arrays["W_dec"], axis=-1), 1e-8).astype(np.float32)
        arrays["W_enc"] = arrays["W_enc"] * norms[None, :]
        arrays["b_enc"] = arrays["b_enc"] * norms
        arrays["W_dec"] = arrays["W_dec"] / norms[:, None]
    return arrays


# -- PyTorch ------------------------------------------------------------------------------
def to_torch_state_dict(sae: SAE) -> dict[str, Any]:
    """The params as a SAELens state dict of torch tensors (float32, or bfloat16 if all are).

    Keys match what `save_sae` writes, so `SAELensSAE.load_state_dict` accepts it for the
    architecture `save_sae` maps to (`threshold` included for batchtopk -> jumprelu).
    """
    try:
        import torch
    except ImportError as exc:
        raise SauceError("to_torch_state_dict needs torch: pip install 'sauce-jax[torch]'") from exc
    check_params(sae.params, sae.config, origin="to_torch_state_dict")
    state = {}
    for name, array in export_arrays(sae).items():
        if array.dtype == np.dtype(ml_dtypes.bfloat16):
            state[name] = torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
        else:
            state[name] = torch.from_numpy(array.copy())
    return state
