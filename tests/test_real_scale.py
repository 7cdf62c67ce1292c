"""Real-size smoke (slow): encoders of the seed's real architectures (random weights, saved
with save_pretrained) -> prepare -> a store of 512 x 1024 audio and 128 x 768 text -> a head
trains on it. bench/bench_real_scale.py reports the same run's figures."""

from __future__ import annotations

import pytest

from bench import bench_real_scale


@pytest.mark.slow
def test_real_size_prepare_and_train(tmp_path) -> None:
    figures = bench_real_scale.main(
        ["--sessions", "3", "--models", "case-compressing", "--no-write", "--keep", str(tmp_path)]
    )
    assert figures["shapes"] == {"audio": (512, 1024), "text": (128, 768)}
    # fp16: 512 x 1024 x 2 + 128 x 768 x 2 + 768 x 2 bytes = 1.24 MB, plus the table
    assert 1.2e6 < figures["bytes_per_utt"] < 1.4e6
    assert figures["per_utt"]["audio"] > figures["per_utt"]["text"] > 0
    assert 0 < figures["rss_gb"]["case-compressing"] < 8
