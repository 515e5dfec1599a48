import os

import torch
from hypothesis import settings

# Two cores on CI: keep torch from oversubscribing when pytest-xdist runs two workers.
torch.set_num_threads(int(os.environ.get("ODEDEPTH_TEST_THREADS", "1")))

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("ci")
