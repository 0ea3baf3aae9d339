"""Project-wide constants. ``IGNORE_INDEX`` is defined here and nowhere else."""

#: Mask value meaning "no label here": skipped by losses and metrics, used as
#: the fill value when a transform pads or rotates a mask.
IGNORE_INDEX = 255

#: Image file suffixes the folder datasets recognise (compared lower-case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
