"""Torch datasets and collate functions: pre-training pairs, segmentation and detection sets."""
