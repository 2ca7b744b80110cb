"""alframe: annotation-efficient (bio)medical image segmentation.

What to annotate next (active learning), how to get more from each label (pseudo-labels), and which
model to trust on a new site without its labels (label-free ranking).
"""

from __future__ import annotations

import os

# Offline by design: nothing may reach a model hub at run time. These must be set before anything
# imports huggingface_hub (pulled in by timm / smp) or albumentations.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

__all__ = ["__version__"]
