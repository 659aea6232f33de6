"""Default preprocessing sizes, shared by the NumPy entry points and the TensorFlow pipelines."""

IMAGE_SIZE = 224  # Side of ImageNet-like crops (AlexNet: 227).
CROP_PADDING = 32  # Evaluation centre crop keeps S / (S + 32) of the shorter side: 224 of 256.
SHUFFLE_BUFFER_SIZE = 16_384  # Examples; about 1.8 GB of encoded ImageNet JPEGs per process.
