"""The trainer benchmark's arithmetic and table (the full run takes a minute: `make bench`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lora_devkit.bench.trainer import (
    WARMUP_STEPS,
    Rate,
    TrainerMeasure,
    _clock,
    print_table,
)


def measure(steps_cpu_s: float) -> TrainerMeasure:
    return TrainerMeasure(
        rate=Rate(10_000, wall_s=4.0, cpu_s=steps_cpu_s + 0.5),
        steps_only=Rate(10_000, wall_s=3.5, cpu_s=steps_cpu_s),
        checkpoint_wall_s=0.5,
        upload_seconds=0.2,
        uploads=4,
        run_seconds=9.0,
    )


def test_goal_is_judged_on_the_median_round_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    """Each round's trainer rate over the plain rate measured just before it; the median ratio
    decides, so one undisturbed round of either side does not."""
    plain = [Rate(10_000, 3.0, 2.5), Rate(10_000, 3.0, 2.0), Rate(10_000, 3.0, 1.0)]
    # ratios: 4000/4000 = 100%, 4762/5000 = 95.2%, 3333/10000 = 33.3% (an outlier plain round)
    assert print_table(plain, [measure(2.5), measure(2.1), measure(3.0)]) is True
    out = capsys.readouterr().out
    assert "95.2% of plain [4000 / 4762 / 3333; 100.0% / 95.2% / 33.3%]" in out and ": met" in out
    assert "[4000 / 5000 / 10000]" in out
    assert "5.0% of window" in out  # 0.2 s of uploads in a 4 s window
    assert print_table(plain[:1], [measure(3.125)]) is False  # 3200/s against 4000/s: 80%
    assert "NOT met" in capsys.readouterr().out


def test_clock_excludes_checkpoint_pauses_after_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fake clock: each step ends at t = 10*step (CPU: 5*step), each save ends 2 s (CPU 1 s)
    later. Only the saves after the warm-up step count as pauses."""
    import lora_devkit.bench.trainer as bench

    clock = _clock()
    args = control = SimpleNamespace()
    steps = WARMUP_STEPS + 3
    for step in range(1, steps + 1):
        state = SimpleNamespace(global_step=step, num_input_tokens_seen=100 * step)
        monkeypatch.setattr(bench, "_now", lambda s=step: (10.0 * s, 5.0 * s))
        clock.on_step_end(args, state, control)
        monkeypatch.setattr(bench, "_now", lambda s=step: (10.0 * s + 2.0, 5.0 * s + 1.0))
        clock.on_save(args, state, control)
    monkeypatch.setattr(bench, "_now", lambda: (10.0 * steps + 3.0, 5.0 * steps + 1.5))
    clock.on_train_end(args, state, control)
    assert clock.start == (10.0 * WARMUP_STEPS, 5.0 * WARMUP_STEPS, 100 * WARMUP_STEPS)
    assert clock.end == (10.0 * steps + 3.0, 5.0 * steps + 1.5, 100 * steps)
    assert clock.paused == [2.0 * 3, 1.0 * 3]  # the three saves after the warm-up


def test_trainer_memory_goal_is_the_chunked_loss_cut_at_128k(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lora_devkit.bench.trainer_memory import CONFIGS, Measure
    from lora_devkit.bench.trainer_memory import print_table as memory_table

    def results(lean_peak: float) -> dict[str, Measure]:
        peaks = dict(zip(CONFIGS, (6000.0, lean_peak, 35.0, 29.0), strict=True))
        return {name: Measure(10.0, peak, 100.0) for name, peak in peaks.items()}

    assert memory_table(results(400.0)) is True
    out = capsys.readouterr().out
    assert "chunked loss: peak 6000 -> 400 MiB (-93%)" in out and ": met" in out
    assert "no fp32 upcast: peak 35 -> 29 MiB (-17%)" in out
    assert "Llama-3.1-8B" in out
    assert memory_table(results(4000.0)) is False  # -33%
    assert "NOT met" in capsys.readouterr().out
