"""A deployment's lifecycle: the states, their order, and which moves are allowed.

States only move forward. A report may skip states (a pod that says "training" proves it started
and downloaded), and any live state may end in a terminal one; a terminal state is final.
"""

from __future__ import annotations

import enum

from tunelab.deploy.v1 import deployments_pb2 as pb


class State(enum.StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    STARTING = "starting"
    DOWNLOADING = "downloading"
    TRAINING = "training"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    def can_become(self, other: State) -> bool:
        if self.terminal or other == self:
            return False
        return other.terminal or _ORDER.index(other) > _ORDER.index(self)

    def to_proto(self) -> pb.DeploymentState.ValueType:
        return pb.DeploymentState.Value(f"DEPLOYMENT_STATE_{self.name}")

    @classmethod
    def from_proto(cls, value: pb.DeploymentState.ValueType) -> State:
        return cls[pb.DeploymentState.Name(value).removeprefix("DEPLOYMENT_STATE_")]


_ORDER = list(State)
TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED})
LIVE = frozenset(State) - TERMINAL


class Stop(enum.StrEnum):
    """Why a run ended other than by succeeding: DeploymentError.code."""

    TRAINER_FAILED = "TRAINER_FAILED"
    BOOTSTRAP_FAILED = "BOOTSTRAP_FAILED"
    # The pod could not use the GPUs it rented: it stopped before it trained (or billed on).
    GPU_UNAVAILABLE = "GPU_UNAVAILABLE"
    # The image's torch is not the version the pod's packages are pinned for.
    TORCH_MISMATCH = "TORCH_MISMATCH"
    MAX_RUNTIME = "MAX_RUNTIME"
    MAX_COST = "MAX_COST"
    HEARTBEAT_TIMEOUT = "HEARTBEAT_TIMEOUT"
    POD_FAILED = "POD_FAILED"
    POD_VANISHED = "POD_VANISHED"
    PROVIDER_REFUSED = "PROVIDER_REFUSED"
    START_TIMEOUT = "START_TIMEOUT"
    DATASET_UNAVAILABLE = "DATASET_UNAVAILABLE"
    CANCELLED = "CANCELLED"
