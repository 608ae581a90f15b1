"""Procedural indoor RGB-D scenes written in ScanNet's on-disk formats: pri3d's embedded default data."""
