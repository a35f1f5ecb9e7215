"""What every command shares: one option dialect, config loading, and errors as exit codes.

Dialect: argparse with kebab-case long options (`--model-dir`, `--label-map`, `--score-threshold`),
the POSIX convention and what most of the commands already used. absl flags were the other
candidate (TensorFlow's own tools use them), but they are process-global: a command could not be
called twice in one process, which the tests and the quickstart do. For scripts written against the
two commands that used absl (`train_main.py --model_dir`, `export_saved_model.py --export_dir`),
an underscore spelling of any long option is read as its kebab-case twin.

The same names mean the same thing everywhere:
  --model-dir DIR     a model dir (config.yaml, checkpoints/, labels.json), written by
                      polarmask-train / -quickstart / -convert-original, read by the others;
  --checkpoint PATH   a specific checkpoint to read instead of the model dir's latest (a ckpt-N
                      prefix, a model dir or its checkpoints/ dir);
  --config FILE       a YAML config (commands reading a model dir default to its config.yaml);
  --set KEY=VALUE     a dotted config override, repeatable;
  --label-map FILE    a labels json (category ids and names; default: the model dir's labels.json);
  --score-threshold T detections below T are not drawn or written.
Exit status: 0 done, 1 nothing to do (no readable input), 2 an unusable argument, file or
config (the message says which), 3 a multi-worker training that lost a worker (polarmask-train:
restart every worker), 130 interrupted.
Every path may be local or a URI tf.io.gfile knows (gs://, hdfs://, s3:// with tensorflow-io).
"""

import argparse
import sys

USAGE_ERROR = 2
INTERRUPTED = 130


class UsageError(ValueError):
    """An argument that cannot be used: the message says which and why."""


def parser(doc):
    """An ArgumentParser whose description is the first paragraph of a command's docstring and
    whose epilog is the rest."""
    first, _, rest = (doc or "").strip().partition("\n\n")
    return argparse.ArgumentParser(description=first, epilog=rest or None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def positive_int(text):
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_config(parser, required=False, default=None):
    help_text = "YAML config" if required or default else "YAML config (default: the model dir's config.yaml)"
    parser.add_argument("--config", required=required, default=default, help=help_text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. --set train.total_steps=500 (repeatable)")


def add_model_source(parser, required=True):
    """--model-dir and --checkpoint for commands that read a trained model (one of them is needed)."""
    parser.add_argument("--model-dir", help="model dir to read (its latest checkpoint and config.yaml)")
    parser.add_argument("--checkpoint",
                        help="a specific checkpoint instead: ckpt-N prefix, model dir or checkpoints/ dir")
    parser.set_defaults(_model_source_required=required)


def add_label_map(parser, help_text="labels json: category ids and names (default: the model dir's labels.json)"):
    parser.add_argument("--label-map", help=help_text)


def add_score_threshold(parser, default):
    parser.add_argument("--score-threshold", type=float, default=default,
                        help=f"leave out detections scoring below this (default {default})")


def model_source(args):
    """The checkpoint to read: --checkpoint when given, else --model-dir (None when neither is
    given and the command does not need one; UsageError when it does)."""
    source = args.checkpoint or args.model_dir
    if source is None and getattr(args, "_model_source_required", True):
        raise UsageError("give --model-dir (or --checkpoint)")
    return source


def load_model_config(args):
    """The config to run a trained model with: --config, else config.yaml beside its checkpoint;
    then --set."""
    from polarmask_tf import config as cfg
    from polarmask_tf import inference

    source = model_source(args)
    if source is None:
        if args.config is None:
            raise cfg.ConfigError("pass --config (or --model-dir of a model dir that holds config.yaml)")
        return cfg.load_config(args.config, args.set)
    return cfg.load_config(inference.checkpoint_config_path(source, args.config), args.set)


def label_map(args, config):
    """--label-map, else the model dir's labels.json, else data.coco.model_label_map's fallbacks."""
    from polarmask_tf import inference
    from polarmask_tf.data import coco

    path = args.label_map
    source = model_source(args)
    if path is None and source is not None:
        path = inference.beside_checkpoint(source, inference.LABELS_FILE)
    try:
        return coco.model_label_map(config, path)
    except ValueError as error:
        raise UsageError(str(error)) from error


def _kebab_case(argv, parser):
    """--foo_bar[=x] -> --foo-bar[=x] when the parser knows --foo-bar (the former absl spelling)."""
    known = {option for action in parser._actions for option in action.option_strings}
    fixed = []
    for token in argv:
        name, sep, value = token.partition("=")
        if name.startswith("--") and "_" in name and name not in known and name.replace("_", "-") in known:
            token = name.replace("_", "-") + sep + value
        fixed.append(token)
    return fixed


def parse(parser, argv=None):
    """parser.parse_args with the underscore spellings read as kebab-case."""
    return parser.parse_args(_kebab_case(sys.argv[1:] if argv is None else list(argv), parser))


def expected_errors():
    """The errors a command reports as a one-line message with exit status 2: every error of this
    project that describes bad input is a ValueError (ConfigError, CheckpointMismatchError,
    ConversionError, InvalidAnnotationsError, UsageError, ...), files that are missing, exist already
    or cannot be read are OSErrors; a diverging training run is NonFiniteLossError, a model dir whose
    checkpoints cannot be restored CheckpointError, one another training holds ModelDirLocked, a
    LiteRT conversion that fails TFLiteConversionError."""
    from polarmask_tf.checkpoints import CheckpointError, ModelDirLocked
    from polarmask_tf.serving.client import ServingError
    from polarmask_tf.serving.tflite import TFLiteConversionError
    from polarmask_tf.training.loop import NonFiniteLossError

    return (ValueError, OSError, NonFiniteLossError, ServingError, CheckpointError, ModelDirLocked,
            TFLiteConversionError)


def guarded(command, args, stream):
    """Runs command(args, stream) -> exit status, turning the expected errors into their message on
    stderr and status 2, and Ctrl-C into status 130."""
    errors = expected_errors()
    try:
        return command(args, stream)
    except errors as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
