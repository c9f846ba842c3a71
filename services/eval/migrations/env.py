from services.common.migrations import run_env
from services.eval.models import Base

run_env(Base.metadata)
