"""Official COCO box metrics: ``cocoeval`` (numpy COCOeval) and ``metric`` (the TFMA metric).

Import the submodules directly: ``cocoeval`` needs only numpy, ``metric`` pulls in TFMA.
"""
