"""Feature: ``mscluster train`` in pods of Huawei's ascend-operator (MindCluster).

Description: the environment the operator injects into MindSpore pods (Ascend/mind-cluster
``component/ascend-operator/pkg/controllers/v1/env.go``, ``setMindSporeEnv``: ``MS_SCHED_HOST``,
``MS_SCHED_PORT``, ``MS_WORKER_NUM``, ``MS_LOCAL_WORKER``, ``MS_NODE_RANK``, ``MS_SERVER_NUM=0``,
``MS_ROLE``; no ``MS_NODE_ID``, ``RANK_ID`` or ``DEVICE_ID``), and the rank table it writes at
``/user/serverid/devindex/config/hccl.json`` (its docs' ``hccl.json_file_description.md``:
``status`` ``initializing`` until every pod is placed, then ``completed``, each server with its
``container_ip``). A Scheduler pod and a Worker pod of 2 NPUs are real processes on CPU here.
Expectation: a Worker pod starts one process per NPU with the rank, device and local rank msrun
and the operator's ``train_start.sh`` give them; the 2 ranks train one model; the first process
to fail stops the others and is the pod's exit code; the rank table is waited for and this pod's
devices are found in it by its address; a pod whose ranks do not fit is one line.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest

from helpers import REPO_ROOT, free_port
from mscluster import pod
from mscluster.errors import RankEnvError
from mscluster.rank import DYNAMIC_CLUSTER, rank_info

OPERATOR_ENV = {"MS_SCHED_HOST": "10.96.0.12", "MS_SCHED_PORT": "2222", "MS_WORKER_NUM": "16", "MS_LOCAL_WORKER": "8",
                "MS_SERVER_NUM": "0", "MS_ROLE": "MS_WORKER", "NPU_POD": "true"}


def test_a_worker_pod_starts_one_process_per_npu_with_its_rank():
    workers = pod.dynamic_workers({**OPERATOR_ENV, "MS_NODE_RANK": "1"})
    assert [w["MS_NODE_ID"] for w in workers] == [str(r) for r in range(8, 16)]
    assert [w["DEVICE_ID"] for w in workers] == [str(d) for d in range(8)]
    infos = [rank_info({**OPERATOR_ENV, "MS_NODE_RANK": "1", **w}) for w in workers]
    assert [(i.rank, i.local_rank, i.local_size, i.device_id, i.world_size) for i in infos] == [
        (8 + d, d, 8, d, 16) for d in range(8)]
    assert {i.backend for i in infos} == {DYNAMIC_CLUSTER}


def test_one_process_per_pod_needs_no_fan_out_and_reads_its_rank():
    one = {**OPERATOR_ENV, "MS_LOCAL_WORKER": "1", "MS_WORKER_NUM": "4", "MS_NODE_RANK": "3"}
    assert pod.dynamic_workers(one) is None
    info = rank_info(one)
    assert (info.rank, info.world_size, info.local_size, info.device_id) == (3, 4, 1, 0)
    assert pod.dynamic_workers({**OPERATOR_ENV, "MS_NODE_RANK": "0", "MS_NODE_ID": "5"}) is None  # a rank already
    assert pod.dynamic_workers({**OPERATOR_ENV, "MS_ROLE": "MS_SCHED", "MS_NODE_RANK": "0"}) is None


def test_a_pod_whose_ranks_do_not_fit_is_one_line():
    with pytest.raises(RankEnvError, match=r"^environment: MS_NODE_RANK=2 x MS_LOCAL_WORKER=8 leaves no room in "
                                           r"MS_WORKER_NUM=16 for this pod's 8 ranks$"):
        pod.dynamic_workers({**OPERATOR_ENV, "MS_NODE_RANK": "2"})


# the layout of the operator's hccl.json (mind-cluster docs/en/scheduling/api/hccl.json_file_description.md),
# with the placeholders ("xx.xx.xx.xx") given values
HCCL_JSON = {
    "status": "completed",
    "server_list": [
        {"device": [{"device_id": "0", "device_ip": "192.168.100.1", "rank_id": "0"},
                    {"device_id": "1", "device_ip": "192.168.100.2", "rank_id": "1"}],
         "server_id": "node-a", "host_ip": "10.0.0.1", "container_ip": "192.168.149.10"},
        {"device": [{"device_id": "0", "device_ip": "192.168.101.1", "rank_id": "2"},
                    {"device_id": "1", "device_ip": "192.168.101.2", "rank_id": "3"}],
         "server_id": "node-b", "host_ip": "10.0.0.2", "container_ip": "192.168.149.11"},
    ],
    "server_count": "2",
    "version": "1.0",
}


def test_the_operators_rank_table_is_waited_for_and_this_pods_devices_found(tmp_path):
    path = tmp_path / "hccl.json"
    path.write_text(json.dumps({"status": "initializing"}))

    def complete():
        time.sleep(0.5)
        path.write_text(json.dumps(HCCL_JSON))

    threading.Thread(target=complete).start()
    table = pod.wait_for_rank_table(str(path), timeout_s=20, poll_s=0.1)
    workers = pod.rank_table_workers(table, str(path), {"127.0.0.1", "192.168.149.11"})
    assert workers == [{"RANK_TABLE_FILE": str(path), "RANK_ID": "2", "RANK_SIZE": "4", "DEVICE_ID": "0",
                        "LOCAL_RANK": "0", "LOCAL_SIZE": "2"},
                       {"RANK_TABLE_FILE": str(path), "RANK_ID": "3", "RANK_SIZE": "4", "DEVICE_ID": "1",
                        "LOCAL_RANK": "1", "LOCAL_SIZE": "2"}]
    assert rank_info(workers[1]).rank == 3 and rank_info(workers[1]).device_target == "Ascend"
    with pytest.raises(RankEnvError, match="no server of the rank table is this pod"):
        pod.rank_table_workers(table, str(path), {"10.9.9.9"})
    path.write_text(json.dumps({"status": "initializing"}))
    with pytest.raises(RankEnvError, match="the rank table is still initializing after 0 s"):
        pod.wait_for_rank_table(str(path), timeout_s=0.3, poll_s=0.1)


def test_the_first_process_to_fail_stops_the_others_and_is_the_pods_exit_code(tmp_path):
    marker = tmp_path / "sleeper.pid"
    program = ("import os, sys, time\n"
               "if os.environ['LOCAL_RANK'] == '1':\n    time.sleep(0.5); sys.exit(3)\n"
               f"open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(60)\n")
    began = time.monotonic()
    code = pod.run_workers([sys.executable, "-c", program], [{"LOCAL_RANK": "0"}, {"LOCAL_RANK": "1"}], os.environ,
                           grace_s=2)
    assert code == 3 and time.monotonic() - began < 15
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.integration
def test_a_scheduler_pod_and_a_worker_pod_of_2_npus_train_one_model(tmp_path, cifar_dir):
    port = free_port()
    env = {**os.environ, "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": str(port), "MS_WORKER_NUM": "2",
           "MS_SERVER_NUM": "0", "MS_TOPO_TIMEOUT": "60", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    settings = ["arch=resnet18", "stem=cifar", "width=8", "image_size=32", "batch_size=16", "steps_per_epoch=4",
                "epochs=1", "log_every_steps=2", "tensorboard=false", "eval_every_epochs=0", f"data_dir={cifar_dir}",
                f"output_dir={tmp_path / 'out'}"]
    argv = [sys.executable, "-m", "mscluster_cli", "train", "--set", *settings]
    scheduler = subprocess.Popen(argv, env={**env, "MS_ROLE": "MS_SCHED", "MS_NODE_RANK": "0"}, cwd=str(tmp_path),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        worker = subprocess.run(argv, env={**env, "MS_ROLE": "MS_WORKER", "MS_NODE_RANK": "0", "MS_LOCAL_WORKER": "2",
                                           "NPU_POD": "true"}, cwd=str(tmp_path), capture_output=True, text=True,
                                timeout=300)
        assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
        assert scheduler.wait(timeout=60) == 0
    finally:
        if scheduler.poll() is None:
            os.killpg(scheduler.pid, 9)
    finals = re.findall(r"^final rank=(\d) global_step=4 loss=\S+ weights_sha256=(\w+)$", worker.stdout, re.M)
    assert sorted(r for r, _ in finals) == ["0", "1"] and len({d for _, d in finals}) == 1, worker.stdout[-3000:]
    assert "gradient exchange: shared_memory" in worker.stdout  # the pod's two processes share its host


def test_the_ascendjob_manifest_runs_the_trainer_as_the_operator_expects():
    import yaml

    from launcher.config import load_cluster
    from trainer.config import from_dict

    path = os.path.join(REPO_ROOT, "cluster_configs", "kubernetes", "ascendjob_resnet50_2x8.yaml")
    config_map, job = list(yaml.safe_load_all(open(path)))
    assert (job["apiVersion"], job["kind"], job["metadata"]["labels"]["framework"]) == (
        "mindxdl.gitee.com/v1", "AscendJob", "mindspore")
    specs = job["spec"]["replicaSpecs"]
    assert specs["Scheduler"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 3
    for role in ("Scheduler", "Worker"):
        (container,) = specs[role]["template"]["spec"]["containers"]
        assert container["name"] == "ascend"  # the container the operator injects MS_* into
        assert container["command"] == ["mscluster", "train", "--config", "/job/config/train.yaml"]
        assert {"containerPort": 2222, "name": "ascendjob-port"} in container["ports"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/job/config", "/job/data", "/job/output"} <= mounts
    worker = specs["Worker"]["template"]["spec"]["containers"][0]
    assert worker["resources"]["requests"] == {"huawei.com/Ascend910": 8}
    settings = yaml.safe_load(config_map["data"]["train.yaml"])
    from_dict(settings, "train.yaml")  # valid trainer settings
    recipe = load_cluster(os.path.join(REPO_ROOT, "cluster_configs", "ascend_2x8.yaml")).train_dict()
    recipe.pop("resume")
    assert {k: v for k, v in settings.items() if k not in ("data_dir", "output_dir")} == {
        k: v for k, v in recipe.items() if k != "data_dir"}
