"""The commands, one module each; installed as console scripts (setup.cfg), all in one dialect
(cli/common.py):

| command                     | module              | does                                                  |
|-----------------------------|---------------------|-------------------------------------------------------|
| polarmask-quickstart        | quickstart          | synthetic data -> records -> training -> AP, overlays |
| polarmask-make-synthetic    | make_synthetic      | the synthetic shapes dataset (COCO json + images)     |
| polarmask-create-tfrecords  | create_tfrecords    | COCO json + images -> TFRecord shards                 |
| polarmask-train             | train               | training on any tf.distribute strategy                |
| polarmask-evaluate          | evaluate            | COCO segm and bbox AP of a model dir                  |
| polarmask-predict           | predict             | overlays and results for images; training targets     |
| polarmask-export            | export              | SavedModel for TF Serving                             |
| polarmask-client            | client              | REST requests to TF Serving                           |
| polarmask-plot-training     | plot_training       | loss and learning-rate curves                         |
| polarmask-upper-bound       | upper_bound         | the representation upper bound of a COCO dataset      |
| polarmask-convert-original  | convert_original    | the original's .pth checkpoints -> a model dir        |

Each module has main(argv=None, stream=None) -> exit status, and runs with `python -m
polarmask_tf.cli.<module>` too. The libraries they call live in the package (data/, training/,
serving/, conversion/, ...), never here.
"""
