"""Readers and writers for the on-disk formats pri3d consumes and produces.

* :mod:`pri3d.io.sens`: ScanNet ``.sens`` RGB-D streams (streaming reader, writer).
* :mod:`pri3d.io.images`: 16-bit depth PNGs, label/instance PNGs, JPEG colour.
* :mod:`pri3d.io.scannet`: meshes, over-segmentations, aggregations, the label table, matrix text files.
* :mod:`pri3d.io.coco`: COCO instances JSON.
* :mod:`pri3d.io.scene_lists`: ScanNet scene lists and which ones a command reads.
* :mod:`pri3d.io.pairs`, :mod:`pri3d.io.chunk_boxes`, :mod:`pri3d.io.point_cloud`: what
  `pri3d preprocess scannet` writes for pre-training (pair lists, crop boxes, scene clouds).
* :mod:`pri3d.io.atomic`: the atomic write every writer uses.
* :mod:`pri3d.io.text_table`: the line loop and line-numbered errors of the text-table readers.

Nothing is re-exported here so that importing one format does not pull in the others' dependencies.
"""
