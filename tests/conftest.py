import os

# Two cores are shared with producers in the tests: spinning OpenMP threads would starve them.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(1)
