"""orchestrate: declarative, cached builds of PyTorch models into verified TensorRT engines with plugins."""

__version__ = "0.1.0"
