"""Suite-wide settings.

One intra-op thread: the suite's tensors are small, where a second thread only
adds synchronisation (on a loaded 2-core machine tiny matmuls ran 100x slower
with two). Benchmarks, not tests, measure multi-threaded speed.
"""

import torch

torch.set_num_threads(1)
