"""pri3d: Pri3D (3D priors for 2D representation learning) on today's PyTorch, CPU and GPU."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_backbone"]


def __getattr__(name: str):
    # imported on first use so that `import pri3d` (and `pri3d --version`) stays light
    if name == "load_backbone":
        from pri3d.export import load_backbone

        return load_backbone
    raise AttributeError(f"module 'pri3d' has no attribute {name!r}")
