"""The one packaging setting pyproject.toml cannot express: a package list that is ``find`` *and* a renamed folder.

``registry*`` and ``workers*`` (with every subpackage added later) are found; the top-level folder ``migrations/``
is added as the package ``adreg_migrations`` (its folder is mapped in pyproject.toml's
``[tool.setuptools.package-dir]``). Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["registry", "registry.*", "workers", "workers.*"]), "adreg_migrations"])
