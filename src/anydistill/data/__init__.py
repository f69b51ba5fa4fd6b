"""Datasets, readers and joint transforms (toyworld lives in ``anydistill.data.toyworld``)."""

from anydistill.data.folder import FolderDataset, SkippedSample, UnlabeledImageFolder
from anydistill.data.io import read_image
from anydistill.data.labels import ClassEntry, ClassTable, read_classes, read_depth, read_mask
from anydistill.data.sample_ops import ToTensorSample
from anydistill.data.transforms import (
    Compose,
    PadToMultiple,
    PadToSize,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ResizeToMultiple,
    collate_samples,
    eval_transforms,
    restore_prediction,
    train_transforms,
)

__all__ = [
    "ClassEntry",
    "ClassTable",
    "Compose",
    "FolderDataset",
    "PadToMultiple",
    "PadToSize",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ResizeToMultiple",
    "SkippedSample",
    "ToTensorSample",
    "UnlabeledImageFolder",
    "collate_samples",
    "eval_transforms",
    "read_classes",
    "read_depth",
    "read_image",
    "read_mask",
    "restore_prediction",
    "train_transforms",
]
