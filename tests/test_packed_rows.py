"""The packed layout of Mamba-1 streams on the GPU path (utrc.native_blocks.PackedRows): where rows,
zero rows and scan restarts lie. The packed block itself needs mamba_ssm's kernels and is checked
against the CPU reference in tests/test_gpu_native.py."""

import torch

from utrc.native_blocks import PackedRows


def test_rows_round_trip_behind_zero_rows():
    layout = PackedRows(batch=3, length=1843, gap=3, device="cpu")
    # 1843 + gap rounded so each row starts at a multiple of 8: gap 5 (1848 = 231 * 8)
    assert (layout.gap, layout.seg) == (5, 1848)
    # 3 * 1848 = 5544 rows in the stream; the scan runs them padded to its 2048-step chunk: 6144
    assert (layout.T, layout.scan_steps) == (5544, 6144)
    x = torch.randn(3, 1843, 4)
    packed = layout.pack(x)
    assert packed.shape == (1, 5544, 4)
    assert torch.equal(layout.rows(packed), x)
    real = torch.zeros(5544, dtype=torch.bool)
    for b in range(3):
        real[b * 1848 + 5 : (b + 1) * 1848] = True
    assert torch.equal(packed[0, ~real], torch.zeros(int((~real).sum()), 4))  # every other row is zero
    # the restart is the last zero row before each row, so the conv sees >= gap - 1 zeros after it
    assert layout.restarts.tolist() == [4, 1852, 3700]
    assert layout.row_ends.tolist() == [1848, 3696, 5544]


def test_a_decoding_cache_gets_read_out_steps_after_every_row():
    # d_state 16 read-out steps after each row, before the next row's restart: gap >= 17
    layout = PackedRows(batch=2, length=100, gap=17, device="cpu", tail=16)
    assert (layout.gap, layout.seg) == (20, 120)  # 17 + 100 = 117, rounded up to 120
    assert layout.T == 2 * 120 + 16  # the last row's read-out steps in the tail
    assert layout.row_ends.tolist() == [120, 240]
    assert layout.restarts.tolist() == [19, 139]  # after row 0's read-outs (120..135)


def test_channels_first_rows_and_small_batches():
    layout = PackedRows(batch=2, length=300, gap=3, device="cpu")
    assert (layout.gap, layout.seg, layout.T, layout.scan_steps) == (4, 304, 608, 1024)  # the 1024-step chunk
    y = torch.arange(5 * 1024, dtype=torch.float32).view(1, 5, 1024)  # [1, C, T]
    rows = layout.rows_channels_first(y)  # [B, L, C]
    assert rows.shape == (2, 300, 5)
    assert rows[1, 0, 2] == y[0, 2, 304 + 4] and rows[0, 299, 4] == y[0, 4, 303]
