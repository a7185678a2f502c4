"""lorafuse: take a LoRA fine-tune to production — merge, quantize, validate, serve."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lorafuse")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
