"""COCO instance annotations: conversion from ScanNet / NYUv2 (`convert`, the `pri3d coco` command in
`cli`), evaluation with pycocotools (`evaluate`) and figures of instances (`draw`)."""
