"""The usage examples in the public docstrings run and print what they say."""

import doctest

import pytest

import fastrnn.functional
import fastrnn.modules
import fastrnn.recurrent


@pytest.mark.parametrize("module", [fastrnn.modules, fastrnn.recurrent, fastrnn.functional], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
