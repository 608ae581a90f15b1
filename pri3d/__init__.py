"""pri3d: Pri3D (3D priors for 2D representation learning) on today's PyTorch, CPU and GPU."""

__version__ = "0.1.0"
