"""`pri3d demo`: does the 3D prior help? Generated data, real pre-training and fine-tuning, figures."""
