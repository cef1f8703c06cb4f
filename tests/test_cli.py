"""The command line as a user meets it: numbers that make no sense are refused, help shows every
default, --log-level goes anywhere, and replay says what it could not do instead of printing zeros."""

import argparse
import csv

import pytest

from streamrnn import cli
from streamrnn.offline import plot, replay, simulator


def subcommands() -> dict[str, argparse.ArgumentParser]:
    p = cli.parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize(
    "argv", [["replay", "x.csv", "--horizon", "0"], ["demo", "--streams", "0"], ["simulate", "--rate", "-1"], ["bench", "--rounds", "two"]]
)
def test_numbers_that_make_no_sense_are_refused_by_name(argv, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert argv[-2] in err and ("must be above 0" in err or "not a whole number" in err), err


def test_every_option_has_help_and_shows_its_default() -> None:
    for name, sub in subcommands().items():
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.option_strings == ["-h", "--help"]:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.default not in (None, False, "", argparse.SUPPRESS):
                assert "default" in sub._get_formatter()._get_help_string(action), f"{name} {action.option_strings[0]}"
        assert "(default: 3)" in text or name != "demo"


@pytest.mark.parametrize("argv", [["--log-level", "debug", "config"], ["config", "--log-level", "debug"]])
def test_log_level_goes_before_or_after_the_command(argv) -> None:
    assert cli.parser().parse_args(argv).log_level == "debug"
    assert cli.parser().parse_args(["config"]).log_level is None


def test_a_replay_too_short_to_score_or_to_train_says_so(tmp_path, capsys) -> None:
    data = tmp_path / "short.csv"
    simulator.write_csv(data, 1, 1, seed=0)
    assert cli.main(["replay", str(data), "--stream-column", "stream", "--period", "10", "--horizon", "5", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "1 frame(s)" in err and "too few to score" in err and "H = 5" in err
    simulator.write_csv(data, 40, 1, seed=0)
    assert cli.main(["replay", str(data), "--stream-column", "stream", "--horizon", "5", "--quiet"]) == 0
    assert "no retrain: no stream reached trainer.min_frames = 256 frames" in capsys.readouterr().out


def test_a_column_dropped_for_one_cell_names_the_row_and_the_value(tmp_path) -> None:
    data = tmp_path / "bad.csv"
    rows = [["ts", "a", "b", "note"]] + [[str(10 * i), str(i), str(2 * i), "ok"] for i in range(6)]
    rows[4][2] = "12,5 bar"
    with open(data, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    table = replay.read_table(data)
    assert table.columns == ["a"]
    assert table.dropped == ["column 'b' left out: row 5 has '12,5 bar', not a number (empty, nan or na mean missing)"]


def test_the_plot_shows_dates_the_window_the_band_and_the_column_name(tmp_path, monkeypatch) -> None:
    plt = plot.plotting()
    figures = []

    class Keep:
        def __getattr__(self, name):
            return getattr(plt, name)

        def close(self, fig):
            figures.append(fig)

    data, out, png = tmp_path / "sim.csv", tmp_path / "f.csv", tmp_path / "p.png"
    simulator.write_csv(data, 300, 1, seed=1)
    monkeypatch.setattr(plot, "plotting", lambda: Keep())
    argv = ["replay", str(data), "--stream-column", "stream", "--inputs", "reactor_temp,feed_temp", "--targets", "reactor_temp"]
    assert cli.main([*argv, "--horizon", "6", "--out", str(out), "--plot", str(png), "--plot-window", "120", "--quiet"]) == 0
    top = figures[0].axes[0]
    assert top.get_ylabel() == "reactor_temp"
    assert "ConciseDateFormatter" in type(top.xaxis.get_major_formatter()).__name__
    truth = next(line for line in top.get_lines() if line.get_label() == "truth")
    assert len(truth.get_xdata()) == 120
    assert any(line.get_label() == "forecast 3 steps ahead" for line in top.get_lines())  # the middle step by default
    assert top.collections, "no band drawn"
    assert png.read_bytes()[:4] == b"\x89PNG"
    plt.close(figures[0])


def test_the_plot_is_checked_before_the_replay_runs(tmp_path, monkeypatch, capsys) -> None:
    def missing():
        raise RuntimeError("--plot needs matplotlib: pip install 'streamrnn[plot]'")

    monkeypatch.setattr(plot, "plotting", missing)
    monkeypatch.setattr(replay, "replay", lambda *a, **k: pytest.fail("the replay ran before the plot was checked"))
    data = tmp_path / "sim.csv"
    simulator.write_csv(data, 50, 1, seed=1)
    with pytest.raises(RuntimeError, match="needs matplotlib"):
        cli.main(["replay", str(data), "--stream-column", "stream", "--plot", str(tmp_path / "p.png"), "--quiet"])
