"""emlive: near-real-time cryo-EM preprocessing."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("emlive")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
