"""The five built-in tasks. Each is one registry entry; behaviour lives in the task kinds."""

from __future__ import annotations

from visionlab.registry import TaskSpec, register_task

register_task(TaskSpec(
    name="minerals",
    kind="classification",
    model="minerals_cnn",
    input_size=96,
    default_classes=("biotite", "bornite", "chrysocolla", "malachite", "muscovite", "pyrite", "quartz"),
    description="Mineral photo classifier, CNN from scratch (conv 64-128-256-512, GAP, dense 256); optional background removal.",
    seed_project="MinDat Keras CNN, 96 px, 73 % val accuracy (10 classes)",
    dataset="minerals",
))
register_task(TaskSpec(
    name="waste",
    kind="classification",
    model="waste_cnn",
    input_size=224,
    default_classes=("O", "R"),
    description="Organic (O) vs recyclable (R) waste, CNN from scratch (conv 32-64-128-256, dense 128-64).",
    seed_project="Thesis Keras CNN, 224 px, 90.7 % test accuracy",
    dataset="waste",
))
register_task(TaskSpec(
    name="cracks",
    kind="classification",
    model="cracks_cnn",
    input_size=128,
    default_classes=("Negative", "Positive"),
    description="Concrete crack (Positive) vs no crack (Negative), 3-conv-block CNN from scratch.",
    seed_project="Course project CNN, 150 px, 99.4 % test accuracy",
    dataset="cracks",
))
register_task(TaskSpec(
    name="caltech",
    kind="classification",
    model="resnet18",
    input_size=224,
    default_classes=("Faces", "brain", "camera", "dollar_bill", "ketch", "watch"),
    description="ResNet18 (ImageNet weights) fine-tuned on six Caltech101 classes.",
    seed_project="Notebook ResNet18, 98 % on 99 test images",
    dataset="caltech101",
))
register_task(TaskSpec(
    name="landcover",
    kind="segmentation",
    model="unet",
    input_size=256,
    default_classes=("building", "land", "road", "vegetation", "water", "unlabeled"),
    description="U-Net land-cover segmentation of aerial images, focal loss, tiled training and inference.",
    seed_project="LandCover.ai U-Net, F1 0.43",
    dataset="landcover",
))
