"""docs/kubernetes/polarmask-train-indexed-job.yaml against the code that runs in its pods: every
pod's command, expanded the way Kubernetes expands it, must parse as a polarmask-train command and
yield the TF_CONFIG of its index in a cluster of the pods' DNS names; the Job's failure policy must
name the exit statuses the train command uses. No cluster is started: TF_CONFIG is written and
resolved, never served."""

import configparser
import os
import re

import pytest
import yaml

from polarmask_tf import config as cfg
from polarmask_tf.cli import common, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(ROOT, "docs", "kubernetes", "polarmask-train-indexed-job.yaml")
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_FIELD = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")


def expand(text, env):
    """`text` with Kubernetes' $(VAR) expansion (command, args and env values of a container):
    $(NAME) becomes env[NAME] when NAME is defined and stays as written when it is not; $$ is a
    literal $; any other $ (also $NAME, ${NAME}, an unclosed $( and a final $) stays as it is."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$" or i + 1 == len(text):
            out.append(text[i])
            i += 1
        elif text[i + 1] == "$":
            out.append("$")
            i += 2
        elif text[i + 1] == "(":
            close = text.find(")", i + 2)
            if close < 0:  # unclosed: "$(" stays, scanning goes on after it
                out.append("$(")
                i += 2
            else:
                name = text[i + 2:close]
                out.append(env[name] if name in env else f"$({name})")
                i = close + 1
        else:
            out.append("$" + text[i + 1])
            i += 2
    return "".join(out)


def load_manifest():
    with open(MANIFEST) as stream:
        documents = [d for d in yaml.safe_load_all(stream) if d]
    kinds = {(d["apiVersion"], d["kind"]): d for d in documents}
    assert set(kinds) == {("batch/v1", "Job"), ("v1", "Service")}, f"{MANIFEST}: expected one Job and one Service"
    return kinds["batch/v1", "Job"], kinds["v1", "Service"]


def simulated_pod(job, index):
    """What the Job controller makes of the template for completion index `index`: its labels and
    annotation, hostname <job>-<index>, and JOB_COMPLETION_INDEX appended to each container's
    env unless the template declares it."""
    template = job["spec"]["template"]
    name = job["metadata"]["name"]
    labels = dict(template.get("metadata", {}).get("labels", {}))
    labels.update({"batch.kubernetes.io/job-name": name, "job-name": name, INDEX_ANNOTATION: str(index)})
    annotations = dict(template.get("metadata", {}).get("annotations", {}), **{INDEX_ANNOTATION: str(index)})
    spec = dict(template["spec"], hostname=f"{name}-{index}")
    containers = []
    for container in spec["containers"]:
        env = list(container.get("env", []))
        if all(variable["name"] != "JOB_COMPLETION_INDEX" for variable in env):
            env.append({"name": "JOB_COMPLETION_INDEX",
                        "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}})
        containers.append(dict(container, env=env))
    spec["containers"] = containers
    return {"metadata": {"name": f"{name}-{index}-abcde", "labels": labels, "annotations": annotations}, "spec": spec}


def container_env(pod, container):
    """The container's environment as Kubernetes builds it: in list order, each value expanded
    with the variables defined before it; fieldRef values from the pod's metadata."""
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = expand(str(variable["value"]), env)
            continue
        path = variable["valueFrom"]["fieldRef"]["fieldPath"]  # other sources are not used here
        match = _FIELD.match(path)
        if match:
            env[variable["name"]] = pod["metadata"][match.group(1)][match.group(2)]
        else:
            assert path in ("metadata.name", "metadata.namespace"), f"unsupported fieldPath {path}"
            env[variable["name"]] = pod["metadata"].get(path.split(".")[1], "default")
    return env


def pod_command(job, index):
    """(argv, env, container) of the train container of pod `index`."""
    pod = simulated_pod(job, index)
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "train"]
    env = container_env(pod, container)
    argv = [expand(str(token), env) for token in container.get("command", []) + container.get("args", [])]
    return argv, env, container


def parse_train(argv):
    try:
        return common.parse(train.build_parser(), argv)
    except SystemExit as exit:  # argparse: a flag the parser does not know (any more), or a bad value
        pytest.fail(f"polarmask-train does not accept the manifest's arguments {argv} (exit {exit.code})")


@pytest.fixture
def own_tf_config():
    """TF_CONFIG as it was before the test, whatever cluster_environment writes meanwhile."""
    before = os.environ.pop("TF_CONFIG", None)
    yield
    os.environ.pop("TF_CONFIG", None)
    if before is not None:
        os.environ["TF_CONFIG"] = before


def test_the_expander_follows_the_kubernetes_rule():
    env = {"A": "x", "EMPTY": "", "REF": "$(A)"}
    cases = {"$(A)": "x", "-$(A)-$(A)-": "-x-x-", "$$(A)": "$(A)", "$$$(A)": "$x", "$(NOPE)": "$(NOPE)",
             "$A": "$A", "${A}": "${A}", "$(A": "$(A", "a$": "a$", "p$(EMPTY)q": "pq", "$(REF)": "$(A)",
             "$?": "$?", "$(A)$(": "x$("}
    assert {text: expand(text, env) for text in cases} == cases


def test_the_headless_service_names_every_pod_of_the_job():
    job, service = load_manifest()
    spec = service["spec"]
    assert spec["clusterIP"] == "None" and spec["selector"], "a headless Service with a selector"
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert spec.get("publishNotReadyAddresses") is True  # names resolve before a pod is Ready
    for index in range(job["spec"]["completions"]):
        labels = simulated_pod(job, index)["metadata"]["labels"]
        assert spec["selector"].items() <= labels.items(), f"the Service does not select pod {index}"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (port,) = spec["ports"]
    assert port.get("targetPort", port["port"]) in [p["containerPort"] for p in container["ports"]]


def test_every_pod_runs_the_train_command_with_its_own_task_in_one_cluster(own_tf_config):
    import tensorflow as tf

    job, service = load_manifest()
    name, domain = job["metadata"]["name"], service["metadata"]["name"]
    workers = job["spec"]["completions"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == workers >= 2
    (port,) = service["spec"]["ports"]
    hosts = [f"{name}-{index}.{domain}:{port['port']}" for index in range(workers)]

    scripts = configparser.ConfigParser()
    scripts.read(os.path.join(ROOT, "setup.cfg"))
    entry_points = dict(line.replace(" ", "").split("=") for line in
                        scripts["options.entry_points"]["console_scripts"].strip().splitlines())
    model_dirs = set()
    for index in range(workers):
        argv, env, container = pod_command(job, index)
        assert not [token for token in argv if "$(" in token], f"pod {index}: an undefined $(VAR) in {argv}"
        assert entry_points.get(argv[0]) == "polarmask_tf.cli.train:main", f"{argv[0]} is not polarmask-train"
        args = parse_train(argv[1:])
        assert args.strategy == "multi_worker"

        written = train.cluster_environment(args)  # what train() runs before making the strategy
        assert written == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        assert (resolver.task_type, resolver.task_id) == ("worker", index)
        assert resolver.cluster_spec().as_dict() == {"worker": hosts}

        assert args.model_dir.startswith("gs://") and args.model_dir == env["MODEL_DIR"]
        model_dirs.add(args.model_dir)
        in_image = os.path.relpath(os.path.join(container["workingDir"], args.config), container["workingDir"])
        config_path = os.path.join(ROOT, in_image)  # workingDir is the repository's copy in the image
        assert not in_image.startswith("..") and os.path.isfile(config_path), f"{args.config}: not in the repository"
        config = cfg.load_config(config_path, args.set)  # unknown keys raise ConfigError; no data is read
        assert config.data.train_files.startswith(env["DATA_DIR"] + "/")
        replicas = workers * int(container["resources"]["limits"]["nvidia.com/gpu"])
        assert config.data.batch_size % replicas == 0, "the global batch must split evenly over the GPUs"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert "emptyDir" in volumes[mounts[args.scratch_dir]], "--scratch-dir is the pod's own disk"
    assert len(model_dirs) == 1, "every worker restores from one model dir"


def test_the_failure_policy_restarts_preempted_and_orphaned_workers_and_stops_on_usage_errors():
    job, _ = load_manifest()
    spec = job["spec"]
    pod_spec = spec["template"]["spec"]
    assert pod_spec["restartPolicy"] == "Never"  # the only one podFailurePolicy allows
    assert spec.get("podReplacementPolicy") == "Failed"  # one pod per task index at a time
    assert pod_spec["terminationGracePeriodSeconds"] >= 60  # time to finish a step and save
    actions = {}
    for rule in spec["podFailurePolicy"]["rules"]:
        if "onPodConditions" in rule:
            for condition in rule["onPodConditions"]:
                actions.setdefault(condition["type"], rule["action"])
        else:
            codes = rule["onExitCodes"]
            assert codes["operator"] == "In" and codes.get("containerName", "train") == "train"
            for code in codes["values"]:
                actions.setdefault(code, rule["action"])
    assert actions == {"DisruptionTarget": "Ignore", common.INTERRUPTED: "Ignore", train.PEER_LOST: "Ignore",
                       common.USAGE_ERROR: "FailJob"}
    assert spec["backoffLimit"] >= 1


def test_a_worker_that_loses_its_peer_exits_with_the_status_the_job_restarts_on(monkeypatch, capsys, own_tf_config):
    """A collective aborted by a vanished peer (tf.errors.UnavailableError, as
    MultiWorkerMirroredStrategy raises it) ends the train command with PEER_LOST and a message,
    not a traceback; with one worker the error propagates unchanged."""
    import tensorflow as tf

    from polarmask_tf.training import distribute, loop

    class Trainer:
        is_chief, step = True, 7

        def __init__(self, *args):
            pass

        def train(self):
            raise tf.errors.UnavailableError(None, None, "Graph execution error:\n\nCollective ops is aborted by: "
                                             "recvmsg:Connection reset by peer\nThe error could be from a previous op")

    class Strategy:
        num_replicas_in_sync = 2

    monkeypatch.setattr(loop, "Trainer", Trainer)
    monkeypatch.setattr(distribute, "make_strategy", lambda *args: Strategy())
    config = os.path.join(ROOT, "configs", "quickstart.yaml")
    status = train.main([f"--config={config}", "--model-dir=gs://b/run", "--strategy=multi_worker",
                         "--worker-hosts=h0:2222,h1:2222", "--task-index=0"])
    error = capsys.readouterr().err
    assert status == train.PEER_LOST == 3
    assert "lost contact with another worker at step 7 (Collective ops is aborted by: recvmsg:Connection reset" in error
    assert "resume from the latest checkpoint in gs://b/run" in error
    with pytest.raises(tf.errors.UnavailableError):
        train.main([f"--config={config}", "--model-dir=gs://b/run", "--strategy=one_device"])
