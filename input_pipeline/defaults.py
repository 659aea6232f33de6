"""Default preprocessing sizes, shared by the NumPy entry points, the TensorFlow pipelines and configs/."""

IMAGE_SIZE = 224  # Side of ImageNet-like crops.
CROP_PADDING = 32  # Evaluation centre crop keeps S / (S + 32) of the shorter side: 224 of 256.
ALEXNET_IMAGE_SIZE = 227  # Caffe's AlexNet crop.
ALEXNET_CROP_PADDING = 29  # Evaluation: the centre 227 of 256.
SHUFFLE_BUFFER_SIZE = 16_384  # Examples; about 1.8 GB of encoded ImageNet JPEGs per process.
CACHE_BYTES = 1 << 30  # cache=None: a TFDS split is kept in memory if this process's part fits in 1 GiB.
