"""The Examples sections of the reading modules run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "daskimg.read.arrays",
    "daskimg.read.boxes",
    "daskimg.read.csv",
    "daskimg.read.decode",
    "daskimg.read.files",
    "daskimg.read.folder",
    "daskimg.read.geometry",
    "daskimg.read.imageset",
    "daskimg.read.masks",
    "daskimg.read.volumes",
    "daskimg.show",
    "daskimg.testing",
    "daskimg.testing.images",
    "daskimg.testing.objects",
    "daskimg.testing.photos",
    "daskimg.testing.volumes",
    "daskimg.transforms",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
