"""Settings of the deploy service (environment variables TUNELAB_DEPLOY_*)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
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
        if provider == "local" and self.local_api_url:
            return self.local_api_url.rstrip("/")
        return self.public_url.rstrip("/")

    def pod_url(self, provider: str, url: str) -> str:
        """A URL under the public one (a dataset's download link), as a pod of `provider`
        reaches it."""
        public, own = self.public_url.rstrip("/"), self.api_url(provider)
        return own + url[len(public) :] if url.startswith(public + "/") else url

    def cuda_floor(self, image: str) -> str | None:
        """The oldest host CUDA a pod of `image` runs on: known for the configured image only
        (another image's needs are unknown, so none is asked for or enforced)."""
        return self.pod_min_cuda_version if image == self.runpod_image else None
