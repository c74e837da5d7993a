"""fewshot-monai: few-shot 3D organ segmentation for MONAI."""

__version__ = "0.1.0"
