"""The one exception hierarchy of sauce-jax.

Every error a user can cause (a bad argument, a malformed config, a broken checkpoint, an
input of the wrong shape) is raised as a subclass of `SauceError`, and its message names the
culprit: the key, the file, the shape or the value.
"""


class SauceError(Exception):
    """Base class of every error sauce-jax raises on purpose."""


class ConfigError(SauceError, ValueError):
    """A configuration value is missing, malformed, or asks for something not implemented."""


class CheckpointError(SauceError, OSError):
    """A checkpoint is missing, truncated, corrupt, or its tensors do not match the model."""


class InputError(SauceError, ValueError):
    """An input array or image has the wrong rank, shape, dtype, channel count or values."""


class FetchError(CheckpointError):
    """`sauce-jax fetch` could not download a pinned file, or what came differs from its pin."""
