from services.common.migrations import run_env
from services.tracing.models import Base

run_env(Base.metadata)
