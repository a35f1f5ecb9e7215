"""Every file the package reads or writes on a user-given path goes through polarmask_tf.fileio or
tf.io.gfile (so gs://, s3://, hdfs:// and ram:// paths work): Python's local-only file calls may
appear only on lines that say why they are local with a `# local: <reason>` comment."""

import pathlib
import re

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "polarmask_tf"
LOCAL_ONLY = re.compile(
    r"(?<![\w.])open\(|\bos\.open\(|\bos\.(makedirs|mkdir|replace|rename|remove|unlink|listdir|scandir|walk|chmod)\("
    r"|\bos\.path\.(exists|lexists|isfile|isdir|getsize)\(|\bshutil\b|\bglob\.glob\(|\bcv2\.(imread|imwrite)\("
    r"|\.savefig\(\s*[a-z_]*path"
)
MARK = "# local:"


def local_only_calls(text):
    """(line number, line) of every local-only file call in `text` not marked MARK."""
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if LOCAL_ONLY.search(line.split(MARK)[0].split("  # ")[0]) and MARK not in line
            and not line.lstrip().startswith("#")]


def test_the_pattern_catches_each_local_call_and_spares_marked_lines_and_gfile():
    calls = ['open(path, "w")', "with open(path) as f:", "os.makedirs(d, exist_ok=True)", "os.path.exists(p)",
             "os.replace(a, b)", "os.rename(a, b)", "shutil.rmtree(d)", "import shutil", "os.remove(p)",
             "os.listdir(d)", "os.path.isfile(p)", "cv2.imwrite(path, image)", "os.open(p, flags)", "glob.glob(p)"]
    for call in calls:
        assert local_only_calls(f"    {call}\n") == [(1, call)], call
    spared = ["tf.io.gfile.exists(p)", "tf.io.gfile.makedirs(d)", "fileio.write_bytes(p, b)", "os.fdopen(fd)",
              'open(os.devnull, "w")  # local: the null device', "urllib.request.urlopen(request)",
              "# os.makedirs in a comment", "os.path.join(a, b)", "tf.io.gfile.rename(a, b)"]
    for line in spared:
        assert local_only_calls(f"    {line}\n") == [], line


def test_the_package_uses_local_file_calls_only_where_it_says_why():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{number}: {line}"
                 for path in sorted(PACKAGE.rglob("*.py")) for number, line in local_only_calls(path.read_text())]
    assert not offenders, "local-only file calls on possibly remote paths:\n" + "\n".join(offenders)
