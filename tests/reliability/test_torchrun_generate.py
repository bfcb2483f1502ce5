"""``torchrun --nproc-per-node 2 -m pipeline.cli generate``: each worker takes the shard of its
``RANK`` out of ``WORLD_SIZE`` and writes its own part; together they hold every pair once,
exactly as a single process would have stored them. (Each worker's teacher device is
``cuda:$LOCAL_RANK``; ``tests/gpu`` checks that on two GPUs.)"""

from __future__ import annotations

import pytest
from fault_injection import check_two_worker_store


@pytest.mark.slow
def test_two_torchrun_workers_split_the_pairs_and_store_what_one_process_would(
    generate_workspace, tmp_path
):
    check_two_worker_store(generate_workspace, tmp_path, CUDA_VISIBLE_DEVICES="")
