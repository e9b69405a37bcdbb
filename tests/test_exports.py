"""The public surface: __all__ lists what exists, errors share one base."""

import realalloc
from realalloc import errors


def test_all_names_exist_and_are_public():
    for name in realalloc.__all__:
        assert hasattr(realalloc, name), name
    assert sorted(realalloc.__all__) == sorted(set(realalloc.__all__))


def test_every_error_derives_from_the_base_and_a_builtin():
    builtins = (TypeError, ValueError, RuntimeError, AssertionError, MemoryError)
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type) and obj is not errors.RealAllocError:
            assert issubclass(obj, errors.RealAllocError), name
            assert issubclass(obj, builtins), name
            assert obj.__module__ == "realalloc"
            assert getattr(realalloc, name) is obj


def test_error_tree_in_docstring_names_every_error():
    for name in errors.__all__:
        if name[0].isupper():
            assert name in errors.__doc__, name
