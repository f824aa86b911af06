"""One feature spec, COCO <-> tf.Example, the synthetic dataset generator."""
