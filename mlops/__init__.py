"""The mlops library: settings, feature store, training, ONNX, registry helpers.

Importing this package does nothing: no directories, no clients, no tracking URI.
"""

__version__ = "0.1.0"
