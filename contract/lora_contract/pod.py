"""The pod contract: what the operator puts into a trainer pod and the trainer reads from it.

Environment variable names, mount paths, the container name and the exit codes live here once;
the manifest builder (`lora_operator.controller.manifests`) and the trainer (`lora_trainer`)
both import them, so neither side spells the strings itself.
"""

from __future__ import annotations

# Exit codes: the Job's podFailurePolicy fails the Job at once on a bad config, ignores a
# preemption and retries (from the latest checkpoint) on anything else.
EXIT_OK = 0
EXIT_INVALID_CONFIG = 3
EXIT_TRANSIENT = 75
# SIGTERM (preemption, node drain, spot reclaim): every rank stopped at one agreed step and rank 0
# saved a checkpoint there. The Job's podFailurePolicy ignores it (no retry budget spent).
EXIT_PREEMPTED = 76

TRAINER_CONTAINER = "trainer"

# Mount paths inside the trainer pod.
CONFIG_DIR = "/etc/lorajob"  # the run's ConfigMap (TrainerConfig YAML, DeepSpeed JSON)
CONFIG_FILE = "config.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"
PVC_ROOT = "/mnt/pvc"  # pvc://<claim>/<path> is mounted at <PVC_ROOT>/<claim>/<path>
HF_HOME = "/mnt/hf-cache"  # the Hugging Face cache for hf:// models
SHM_DIR = "/dev/shm"
TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath

# The trainer runs with a read-only root file system as this non-root user (the image's `trainer`
# user); everything it writes goes to these emptyDirs, named by the env below.
TRAINER_UID = 1000
TRAINER_GID = 1000
TMP_DIR = "/tmp"  # TMPDIR: torchrun's and Python's temp files, torch inductor's cache
WORK_DIR = f"{TMP_DIR}/lorajob"  # LORAJOB_WORK_DIR: local checkpoints, S3 downloads
HOME_DIR = "/home/trainer"  # HOME: ~/.nv (CUDA JIT), ~/.config (matplotlib)
CACHE_DIR = f"{HOME_DIR}/.cache"  # XDG_CACHE_HOME and the tool caches below it

# Environment set by the operator, read by the trainer.
ENV_CONFIG = "LORAJOB_CONFIG"
ENV_RUN_ID = "LORAJOB_RUN_ID"
# The LoRAJob's metadata.uid: the trainer claims the job's output folder for it (OWNER.json) and
# refuses a folder another uid owns. Only the operator knows it (the downward API sees the pod).
ENV_JOB_UID = "LORAJOB_UID"
ENV_PVC_ROOT = "LORAJOB_PVC_ROOT"
ENV_MASTER_ADDR = "MASTER_ADDR"  # node 0's DNS name <job>-0.<service>.<namespace>.svc
ENV_MASTER_PORT = "MASTER_PORT"
ENV_NNODES = "NNODES"
ENV_NODE_RANK = "NODE_RANK"
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by Kubernetes on Indexed Job pods
ENV_NPROC_PER_NODE = "NPROC_PER_NODE"
ENV_POD_IP = "POD_IP"
ENV_S3_ENDPOINT = "S3_ENDPOINT"
ENV_AWS_REGION = "AWS_REGION"
ENV_ACCESS_KEY = "AWS_ACCESS_KEY_ID"
ENV_SECRET_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_HF_HOME = "HF_HOME"
ENV_WORK_DIR = "LORAJOB_WORK_DIR"
# The pod's ephemeral-storage request (e.g. "20Gi"; unset when there is none): the work dir and
# /tmp are emptyDirs on it, so a trainer that fills its disk says how much it was given.
ENV_EPHEMERAL_STORAGE = "LORAJOB_EPHEMERAL_STORAGE_REQUEST"
# The image reference the trainer container runs (a digest when it is given as one): the run's
# lineage in the model card and MANIFEST.json (lora_trainer.model_card).
ENV_TRAINER_IMAGE = "LORAJOB_TRAINER_IMAGE"
# Where the libraries the trainer loads write their caches; each points into a writable emptyDir.
SCRATCH_ENV: dict[str, str] = {
    "HOME": HOME_DIR,
    "TMPDIR": TMP_DIR,
    ENV_WORK_DIR: WORK_DIR,
    "XDG_CACHE_HOME": CACHE_DIR,
    "TRITON_CACHE_DIR": f"{CACHE_DIR}/triton",
    "TORCHINDUCTOR_CACHE_DIR": f"{CACHE_DIR}/torchinductor",
    "TORCH_EXTENSIONS_DIR": f"{CACHE_DIR}/torch_extensions",  # DeepSpeed's JIT-built ops too
    "MPLCONFIGDIR": f"{CACHE_DIR}/matplotlib",
}

DEFAULT_RENDEZVOUS_PORT = 29500  # as Kubeflow's torch runtime
