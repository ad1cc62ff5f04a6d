import os

# Two cores are shared with producers in the tests: spinning OpenMP threads would starve them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(1)

# Real brokers (redis-server, mosquitto) on free ports, for the tests that ask for them by name.
from broker_support import mosquitto, redis_server  # noqa: E402, F401
