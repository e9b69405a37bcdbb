import pathlib
import sys

from setuptools import setup

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "csrc"))
from build_shim import fast_extension

setup(cffi_modules=["csrc/build_shim.py:ffibuilder"], ext_modules=[fast_extension()])
