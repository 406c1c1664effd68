"""Packaging beyond what pyproject.toml can say: the wheel carries the shipped weights.

The weights live once, in `weights/` at the top of the repository (where training writes them and the
tests pin them). A wheel (`pip install .`, `pip install "haaqi @ git+..."`) maps that folder to the data
package `haaqicli.weights`, where `haaqicli.models.registry.default_weights_dir()` finds it outside a
checkout. pyproject.toml cannot list found packages and a mapped one together, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "haaqicli.weights"],
    package_dir={"": "src", "haaqicli.weights": "weights"},
    package_data={
        "haaqicli": ["profiles/*.csv", "py.typed", "output/*.json"],
        "haaqicli.weights": ["manifest.json", "*.safetensors", "*.calibration.json", "MODEL_CARD.md"],
    },
)
