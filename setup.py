"""One import namespace over the repository's top-level folders.

`ports/`, `train/` and `eval/` stay at the top of the repository but install as
`sauce_jax.ports`, `sauce_jax.train` and `sauce_jax.eval` (setuptools' package-dir maps a
subpackage to a folder, for normal and editable installs alike). Nothing named `ports`,
`train` or `eval` lands in site-packages, so a user's own `train.py` cannot shadow ours.
Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

SUBPACKAGE_FOLDERS = {"ports": "sauce_jax.ports", "train": "sauce_jax.train", "eval": "sauce_jax.eval"}

packages = ["sauce_jax"] + [f"sauce_jax.{sub}" for sub in find_packages("sauce_jax")]
package_dir = {"sauce_jax": "sauce_jax"}
for folder, name in SUBPACKAGE_FOLDERS.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir)
