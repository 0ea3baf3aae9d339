"""Datasets yielding ``(tv_tensors.Image, tv_tensors.Mask)`` pairs, registered in ``DATASETS``.

Importing this package registers "folder", "synthetic", "isic2018" (ISIC 2018
Task 1, official layout), "cityscapes" (official leftImg8bit/gtFine layout) and
"volumes" (3D cases: ``.npz`` + spacing, the Medical Segmentation Decathlon
layout, or 3D TIFF stacks; datasets/volumes/).
"""
import warnings

from datasets.cityscapes import CityscapesDataset
from datasets.folder import FolderDataset
from datasets.io import list_images, parse_mask_mapping, read_image, read_mask
from datasets.isic import ISIC2018Dataset
from datasets.synthetic import SyntheticDataset
from datasets.volumes import VolumeDataset

# `python -m datasets.synthetic` imports this package, and so datasets.synthetic,
# before running that module as __main__; runpy then warns about the second copy,
# which datasets/synthetic.py handles (it registers only once).
warnings.filterwarnings("ignore", message=r"'datasets\.synthetic' found in sys\.modules", category=RuntimeWarning)

__all__ = ["CityscapesDataset", "FolderDataset", "ISIC2018Dataset", "SyntheticDataset", "VolumeDataset", "list_images", "parse_mask_mapping", "read_image", "read_mask"]
