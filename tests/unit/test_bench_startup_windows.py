"""bench.scale's startup windows: where pod startup's tail comes from (pure arithmetic)."""

from bench.scale import startup_breakdown, startup_windows


def test_a_stall_shows_as_one_window_far_above_the_rest() -> None:
    added = {f"pod-{i}": float(i) for i in range(90)}  # one pod seen a second, from t=0
    running = {uid: seen + 0.5 for uid, seen in added.items()}
    for i in range(40, 45):  # the pods seen at 40-44 s waited 8 s
        running[f"pod-{i}"] = added[f"pod-{i}"] + 8.0
    running.pop("pod-89")  # never Running: not counted

    windows = startup_windows(added, running, start=0.0, width=30.0)

    assert windows == [(0.0, 0.5, 30), (30.0, 8.0, 30), (60.0, 0.5, 29)]


def test_the_report_names_the_worst_windows_and_how_many_miss_five_seconds() -> None:
    result = {
        "startup_phase_p99": {"seen -> bound": 0.2, "bound -> Running": 6.1},
        "startup_p99_windows": [(0.0, 0.5, 30), (30.0, 8.0, 30), (60.0, 0.7, 29)],
    }

    lines = startup_breakdown(result)

    assert lines[0].split() == ["p99", "by", "phase", "seen", "->", "bound", "0.20", "s", "bound", "->",
                                "Running", "6.10", "s"]
    assert "worst 8.0 s at 30 s, 0.7 s at 60 s, 0.5 s at 0 s; 1 of 3 windows above 5 s" in lines[1]


def test_results_saved_before_the_breakdown_have_no_lines() -> None:
    assert startup_breakdown({"startup_p99": 3.0}) == []
