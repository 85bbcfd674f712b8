"""A stand-in for a third-party detection library whose code a deployment cannot edit.

It is laid out like Deformable DETR's `models/ops` and encoder: the multi-scale deformable
attention core is plain PyTorch (`functions.ms_deform_attn_core_pytorch`, bilinear `grid_sample`
per level, the library's CPU fallback), imported by name into `modules.MSDeformAttn`, which the
encoder layers use. Pipelines reach it only by import path; orchestrate never edits these files.
"""
