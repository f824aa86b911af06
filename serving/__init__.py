import os

# tfmot QAT and TFMA need Keras 2 (tf_keras); this must be set before TensorFlow loads.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
