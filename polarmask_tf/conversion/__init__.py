"""Running the original PolarMask's published checkpoints (PyTorch, mmdetection v1) in this project.

    state, meta = checkpoint.read_checkpoint("polar_768_1x_r50.pth")     # tensors only, nothing executed
    found = layout.inspect(state)                                        # backbone, head naming, classes, rays
    config = settings.converted_config(found, meta)                      # the original's test settings
    layout.assign(model, state, found, ray_order)                        # torch tensors -> Keras variables

`conversion.convert` (the command polarmask-convert-original) puts these together and writes a model dir. The facts they
rely on (keys, shapes, ray orders, preprocessing) are in shared/reference/original_checkpoints.md.
"""


class ConversionError(ValueError):
    """A file that is not an original PolarMask checkpoint this converter can take, with the reason."""
