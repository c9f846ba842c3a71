"""Settings of the deploy service (environment variables TUNELAB_DEPLOY_*)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from services.common.blobstore.settings import StorageSettings
from services.common.settings import (
    DATABASE_URL,
    GRPC_ADDRESS,
    METRICS_ADDRESS,
    CommonSettings,
    shared,
)
from services.deploy.pod import stack

DEFAULT_RUNPOD_IMAGE = stack.IMAGE


class DeploySettings(CommonSettings, StorageSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNELAB_DEPLOY_", extra="ignore", frozen=True, populate_by_name=True
    )

    database_url: str = Field("sqlite:///var/deploy.db", description=DATABASE_URL)
    grpc_address: str = Field("127.0.0.1:50052", description=GRPC_ADDRESS)
    metrics_address: str = Field("127.0.0.1:9152", description=METRICS_ADDRESS)
    datasets_address: str = Field(
        "127.0.0.1:50051",
        validation_alias=shared("datasets_grpc_address"),
        description="Where the datasets service listens (for the dataset checks and the pod's "
        "download token).",
    )
    keys_kek: SecretStr | None = Field(
        None,
        description="Key-encryption keys for provider API keys: comma-separated Fernet keys, the "
        "first encrypts, all decrypt (rotation: put the new key first, run `python -m "
        "services.deploy keys rotate`, then drop the old one).",
    )
    pod_name_prefix: str = Field(
        "tunelab",
        pattern=r"^[a-z][a-z0-9-]{0,23}$",
        description="Pods are named <prefix>-<deployment id>. The orphan sweep terminates pods "
        "with this prefix that no live deployment owns: installations that share a provider "
        "account need different prefixes.",
    )
    supervise_interval_seconds: float = Field(10.0, gt=0)
    watch_max_seconds: float = Field(
        3600.0,
        gt=0,
        description="A watch (or a follow of a run's log) ends after this long even if the run "
        "goes on; clients reconnect with after_sequence (the gateway's watch deadline is a "
        "little longer).",
    )
    max_log_lines: int = Field(
        10_000,
        ge=100,
        le=1_000_000,
        description="The newest lines of a pod's log a run keeps (each at most 1000 "
        "characters); older ones are dropped, and the run's event log says when that began.",
    )
    provision_timeout_minutes: float = Field(
        30.0,
        gt=0,
        description="How long a run waits for a pod while the provider has no capacity or "
        "rate-limits us, retrying, before it fails (its max_runtime_minutes caps it too).",
    )
    orphan_sweep_interval_seconds: float = Field(300.0, gt=0)
    billing_check_minutes: float = Field(
        30.0,
        gt=0,
        description="How often a finished RunPod run's bill is read from RunPod's billing "
        "records, beside the estimate (billed_usd).",
    )
    billing_settle_hours: float = Field(
        24.0,
        ge=0,
        description="For how long after a run ends its bill is read again (bills settle late); "
        "0 reads none.",
    )
    heartbeat_seconds: int = Field(
        60,
        gt=0,
        le=60,
        description="How often a pod reports while it is otherwise silent (at most a minute: "
        "a run's heartbeat timeout may be as short as 3 minutes).",
    )
    max_cost_per_run_usd: float = Field(
        1000.0, gt=0, description="The highest max_cost_usd a deployment may ask for."
    )
    download_token_uses: int = Field(
        5, ge=1, le=100, description="Downloads a pod may start: retries and resumes included."
    )
    output_dir: Path = Field(
        Path("var/outputs"),
        description="Local storage: where runs' trained outputs (.tar.gz) are kept.",
    )
    output_retention_days: int = Field(
        0,
        ge=0,
        le=36500,
        description="Outputs of finished runs are deleted this long after they arrived, unless "
        "their owner chose otherwise (PUT /v1/output-retention); 0 keeps them until deleted.",
    )
    output_upkeep_interval_seconds: float = Field(
        3600.0,
        gt=0,
        description="How often retention is applied and the output store reconciled with "
        "the records (each pass lists the store).",
    )
    stale_upload_hours: float = Field(
        24.0,
        gt=0,
        description="What a crash left of output uploads (partial files, unfinished multipart "
        "uploads, blobs no run names) is removed after this long.",
    )
    max_output_bytes: int = Field(
        50 * 1024**3,
        gt=0,
        description="Largest output a pod may send (a full fine-tune's weights included).",
    )
    # The local provider: pods are processes on this machine.
    local_work_dir: Path = Path("var/pods")
    local_python: str = Field(
        "", description="Python for local pods' trainer; default: the service's own interpreter."
    )
    local_kill_grace_seconds: float = Field(5.0, ge=0)
    local_api_url: str = Field(
        "",
        description="Where local pods reach the gateway when that is not TUNELAB_PUBLIC_URL: "
        "in containers the public URL is the host's (http://127.0.0.1:8080) and the pods, "
        "inside the deploy container, reach the gateway by its name (http://gateway:8080). "
        "Empty: the public URL.",
    )
    # The container provider: pods are containers on this host, through the Docker Engine API.
    container_docker_host: str = Field(
        "",
        description="The Docker Engine API container pods are run through: Podman's "
        "(`podman system service --time=0 unix:///run/podman/podman.sock`) or Docker's, as "
        "unix:///PATH or tcp://HOST:PORT. Empty: DOCKER_HOST, else Docker's default socket.",
    )
    container_image: str = Field(
        "localhost/tunelab/trainer:latest",
        description="The image of container pods that train the tiny model on the CPU (`make "
        "images` builds it); pods with GPUs run TUNELAB_DEPLOY_RUNPOD_IMAGE, and a request's "
        "`image` overrides either. It must be on the host already: nothing is pulled.",
    )
    container_cpus: float = Field(2.0, gt=0, le=1024, description="CPUs per container pod.")
    container_memory_mb: int = Field(
        4096,
        ge=128,
        description="Memory per container pod, its work directory (a tmpfs) included: a pod "
        "that needs more is killed and its run fails saying so. No swap beyond it.",
    )
    container_pids_limit: int = Field(
        1024, ge=32, description="Processes and threads per container pod."
    )
    container_work_dir_mb: int = Field(
        2048,
        ge=64,
        description="Size of a container pod's one writable directory, /workspace (the dataset, "
        "the trainer's files, the output); the rest of its filesystem is read-only.",
    )
    container_shm_mb: int = Field(
        1024,
        ge=64,
        description="Size of a container pod's /dev/shm (PyTorch's data loader workers need "
        "more than the engines' 64 MiB); it counts toward the memory limit as it fills.",
    )
    container_network: str = Field(
        "tunelab-pods",
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$",
        description="The network container pods join, made on first use.",
    )
    container_subnet: str = Field(
        "10.213.0.0/24",
        description="Its subnet: the host's first address in it is where pods reach the relay "
        "to the gateway.",
    )
    container_internet: bool = Field(
        False,
        description="false: the pods' network is internal, and pods reach only the gateway "
        "(through the relay). true: they reach the internet too, as a GPU run that downloads "
        "its base model and packages must.",
    )
    container_relay_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="The port the relay to the gateway listens on, on the pods' network; 0: "
        "the gateway's own port.",
    )
    container_api_url: str = Field(
        "",
        description="Where container pods reach the gateway, when not through the relay (a "
        "remote engine, Docker Desktop: http://host.docker.internal:8080). Set, no relay runs.",
    )
    container_stop_seconds: int = Field(
        10, ge=0, le=300, description="How long a stopping container pod gets before SIGKILL."
    )
    # RunPod.
    runpod_rest_url: str = "https://api.runpod.io/v2"
    runpod_graphql_url: str = "https://api.runpod.io/graphql"
    runpod_image: str = Field(
        DEFAULT_RUNPOD_IMAGE,
        description="The pods' image (Python, CUDA, torch); a request's `image` overrides it. The "
        "pod's packages are pinned for the default (Python 3.12, CUDA 12.8, torch 2.8.0): on "
        "another image the pre-flight warns that the combination is untested, and a pod whose "
        "torch is not 2.8.0 fails before it downloads anything.",
    )
    pod_min_cuda_version: str = Field(
        stack.CUDA_VERSION,
        pattern=r"^\d+\.\d+$",
        description="RunPod pods go only to hosts whose driver runs at least this CUDA version "
        "(major.minor; RunPod's minCudaVersion): the image's CUDA, or its torch cannot see the "
        "GPU. Change it with runpod_image.",
    )
    runpod_disk_gb: int = Field(60, ge=10, le=2000)

    def api_url(self, provider: str) -> str:
        """The gateway's URL as a pod of `provider` reaches it."""
        if provider == "container":
            if self.container_api_url:
                return self.container_api_url.rstrip("/")
            host, port = self.relay_listen()
            return f"http://{host}:{port}"
        if provider == "local" and self.local_api_url:
            return self.local_api_url.rstrip("/")
        return self.public_url.rstrip("/")

    def gateway_address(self) -> tuple[str, int]:
        """Where the gateway listens, as this service reaches it: what the relay connects to."""
        url = urlsplit(self.api_url("local"))
        return url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)

    def relay_listen(self) -> tuple[str, int]:
        """The relay's address: the host's on the pods' network, and its port."""
        host = str(next(ipaddress.ip_network(self.container_subnet).hosts()))
        return host, self.container_relay_port or self.gateway_address()[1]

    @field_validator("container_subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a subnet (10.213.0.0/24)") from None
        if network.version != 4 or network.num_addresses < 4:
            raise ValueError(f"{value!r}: an IPv4 subnet of at least 4 addresses (a /30)")
        return str(network)

    @field_validator("container_api_url", "local_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        url = urlsplit(value)
        if value and (url.scheme not in ("http", "https") or not url.hostname):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    def pod_url(self, provider: str, url: str) -> str:
        """A URL under the public one (a dataset's download link), as a pod of `provider`
        reaches it."""
        public, own = self.public_url.rstrip("/"), self.api_url(provider)
        return own + url[len(public) :] if url.startswith(public + "/") else url

    def cuda_floor(self, image: str) -> str | None:
        """The oldest host CUDA a pod of `image` runs on: known for the configured image only
        (another image's needs are unknown, so none is asked for or enforced)."""
        return self.pod_min_cuda_version if image == self.runpod_image else None
