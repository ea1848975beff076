"""report.py stays runnable: its timing loop and one tiny end-to-end table (CI runs this file
under --benchmark-disable like the rest of bench/; it times nothing that is asserted)."""

import itertools

from bench import report


def test_rounds_grow_until_min_seconds_then_stop_at_the_cap(monkeypatch):
    calls = {"a": 0, "b": 0}
    steps = {name: (lambda name=name: calls.__setitem__(name, calls[name] + 1)) for name in calls}
    # A fake clock that advances 1 s per reading (4 a round): 10 s last a few rounds.
    clock = itertools.count()
    monkeypatch.setattr(report.time, "perf_counter", lambda: float(next(clock)))
    medians, rounds = report.time_interleaved(steps, "cpu", repeats=2, warmup=1, min_seconds=10)
    assert 2 < rounds < 10
    assert calls == {"a": rounds + 1, "b": rounds + 1}  # warm-up + every round, in turn
    assert set(medians) == {"a", "b"}

    monkeypatch.setattr(report, "MAX_ROUNDS", 3)
    _, rounds = report.time_interleaved(steps, "cpu", repeats=2, warmup=1, min_seconds=1e9)
    assert rounds == 3
    _, rounds = report.time_interleaved(steps, "cpu", repeats=5, warmup=1, min_seconds=0)
    assert rounds == 5  # --repeats is a floor even past the cap


def test_report_prints_one_row_per_selection(tmp_path, capsys):
    out = tmp_path / "perf.md"
    report.main(
        [
            "--sizes",
            "4",
            "--repeats",
            "1",
            "--min-seconds",
            "0",
            "--no-compile",
            "--devices",
            "cpu",
            "--markdown-out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert out.read_text() == text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| cpu |")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [("4", "off"), ("4", "on")]
    for cells in rows:
        assert float(cells[3]) > 0 and float(cells[4]) > 0  # ext and reference ms
        assert cells[5].strip() == "—"  # compiled skipped
        assert cells[7].strip().endswith("x")  # ref/ext
        assert int(cells[-1]) == 1  # calls


def test_memory_rows_time_ext_and_reference(capsys):
    report.main(
        [
            "--memory",
            "8",
            "--memory-k",
            "4",
            "--memory-only",
            "--repeats",
            "1",
            "--min-seconds",
            "0",
            "--devices",
            "cpu",
        ]
    )
    text = capsys.readouterr().out
    assert "K = 4, Q = 8" in text and "| ext ms |" not in text.split("Cross-batch")[0]
    rows = [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| cpu |")]
    assert [r[1].strip() for r in rows] == ["off", "on"]
    for cells in rows:
        assert float(cells[2]) > 0 and float(cells[3]) > 0  # ext and reference ms
        assert cells[4].strip().endswith("x") and int(cells[-1]) == 1
