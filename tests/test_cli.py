"""The command line: every installed command answers --help under its name, in one dialect, and
the two repository scripts are the same commands."""

import configparser
import os
import re
import subprocess
import sys

import pytest

from polarmask_tf.cli import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _console_scripts():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


SCRIPTS = _console_scripts()
SHARED = {  # option -> what it must be called in every command that has it
    "--model-dir", "--checkpoint", "--config", "--set", "--label-map", "--score-threshold", "--output-dir",
}


def test_every_command_module_is_installed_under_a_polarmask_name():
    modules = {f[:-3] for f in os.listdir(os.path.join(ROOT, "polarmask_tf", "cli"))
               if f.endswith(".py") and f not in ("__init__.py", "common.py")}
    assert {target.split(":")[0].rsplit(".", 1)[1] for target in SCRIPTS.values()} == modules
    for name, target in SCRIPTS.items():
        assert name == "polarmask-" + target.split(":")[0].rsplit(".", 1)[1].replace("_", "-")
        assert target.endswith(":main")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_installed_command_answers_help_in_the_one_dialect(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed in this environment (pip install -e .)")
    ran = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(f"usage: {name} ")
    assert f"{name}:" in ran.stdout  # the description names the command
    options = set(re.findall(r"(--[a-z0-9_-]+)", ran.stdout))
    assert not [o for o in options if "_" in o], "long options are kebab-case"
    assert "tensorflow" not in ran.stderr.lower(), "--help must not import TensorFlow"


def test_repository_scripts_are_the_train_and_export_commands():
    for script, name in (("train_main.py", "polarmask-train"), ("export_saved_model.py", "polarmask-export")):
        ran = subprocess.run([sys.executable, os.path.join(ROOT, script), "--help"], capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0 and f"{name}:" in ran.stdout


def test_the_former_absl_spellings_still_parse():
    from polarmask_tf.cli import export, train

    args = common.parse(train.build_parser(), ["--config=c.yaml", "--model_dir", "runs/x", "--task_index=1",
                                               "--worker_hosts", "a:1,b:2", "--strategy", "multi_worker"])
    assert (args.model_dir, args.task_index, args.worker_hosts) == ("runs/x", 1, "a:1,b:2")
    args = common.parse(export.build_parser(), ["--checkpoint", "runs/x", "--export_dir", "e", "--score_threshold",
                                                "0.5", "--label_map", "l.json"])
    assert (args.export_dir, args.score_threshold, args.label_map) == ("e", 0.5, "l.json")
    with pytest.raises(SystemExit):  # unknown options stay unknown
        common.parse(export.build_parser(), ["--model-dir", "m", "--export-dir", "e", "--no_such_option", "1"])


def test_shared_options_have_one_meaning(capsys):
    """The options several commands share are spelled and documented the same way."""
    import importlib

    helps = {}
    for target in SCRIPTS.values():
        module = importlib.import_module(target.split(":")[0])
        for action in module.build_parser()._actions:
            for option in action.option_strings:
                if option in SHARED:
                    helps.setdefault(option, set()).add(action.dest)
    assert {option: dests for option, dests in helps.items() if len(dests) > 1} == {}
    assert helps["--model-dir"] == {"model_dir"} and helps["--set"] == {"set"}


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    from polarmask_tf.cli import evaluate

    status = evaluate.main(["--model-dir", str(tmp_path / "absent"), "--annotations", "a.json", "--images-dir", "."])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no checkpoint at") and err.count("\n") == 1
    assert evaluate.main(["--annotations", "a.json", "--images-dir", "."]) == 2
    assert "give --model-dir (or --checkpoint)" in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file")  # refused before any model or data is read
    assert evaluate.main(["--model-dir", str(tmp_path / "absent"), "--annotations", "a.json", "--images-dir", ".",
                          "--output-dir", str(tmp_path / "taken")]) == 2
    expected = f"error: cannot create the directory {tmp_path / 'taken'}: it or a parent is a file\n"
    assert capsys.readouterr().err == expected
