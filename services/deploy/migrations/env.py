from services.common.migrations import run_env
from services.deploy.models import Base

run_env(Base.metadata)
