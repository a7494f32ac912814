"""multimag: co-registered multi-magnification patch datasets from whole-slide images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("multimag")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
