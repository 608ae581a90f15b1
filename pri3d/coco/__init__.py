"""COCO instance annotations: conversion from ScanNet / NYUv2 (`convert`) and evaluation (`evaluate`)."""
