"""FCN-8s road segmentation and scene parsing in TensorFlow 1.x style: the library behind main.py."""
