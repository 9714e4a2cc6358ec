"""results/ddp_16M/compare_runs.py: the gaps and the speed-up, on logs whose answers are known."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "results" / "ddp_16M" / "compare_runs.py"


def write_run(d: Path, losses: dict[int, float], tokens_per_s: dict[int, float]) -> Path:
    d.mkdir(parents=True)
    with open(d / "log.jsonl", "w") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"step": step, "loss": loss, "tokens_per_s": tokens_per_s[step]}) + "\n")
    return d


def test_gaps_speed_up_and_files(tmp_path):
    steps = [0, 10, 20, 30, 40]
    # step 0 and 10 fall before --skip 10 and must not count: A and B differ most there.
    a = write_run(tmp_path / "a", dict(zip(steps, [9.0, 8.0, 7.0, 6.0, 5.0])), dict(zip(steps, [1.0, 100.0, 90.0, 110.0, 100.0])))
    b = write_run(tmp_path / "b", dict(zip(steps, [1.0, 2.0, 7.25, 6.0, 5.5])), dict(zip(steps, [5.0, 500.0, 190.0, 200.0, 210.0])))
    c = write_run(tmp_path / "c", dict(zip(steps, [9.0, 8.0, 7.0, 6.1, 5.0])), dict(zip(steps, [1.0] * 5)))
    out = tmp_path / "cmp" / "x"
    subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--noise", str(c), "--skip", "10",
                    "--labels", "one", "two", "--out", str(out)], check=True, capture_output=True)
    md = out.with_suffix(".md").read_text()
    # Median tokens/s after step 10: A (90, 110, 100) -> 100; B (190, 200, 210) -> 200; speed-up 2.
    assert "| median tokens/s | 100 | 200 |" in md
    assert "| speed-up over one | 1 | 2.000 |" in md
    # |A − B| at steps 20, 30, 40: 0.25, 0, 0.5 -> max 0.5, mean 0.25, last 0.5.
    assert "max 0.5000, mean 0.2500, at the last step 0.5000" in md
    # |A − C|: 0, 0.1, 0 -> max 0.1, mean 0.0333, last 0.
    assert "max 0.1000, mean 0.0333, at the last step 0.0000" in md
    rows = out.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "step,one,two,repeat" and len(rows) == 1 + len(steps)
    assert out.with_suffix(".png").stat().st_size > 0


def test_no_common_step_after_skip_is_an_error(tmp_path):
    a = write_run(tmp_path / "a", {0: 9.0, 10: 8.0}, {0: 1.0, 10: 1.0})
    b = write_run(tmp_path / "b", {0: 9.0, 20: 8.0}, {0: 1.0, 20: 1.0})
    r = subprocess.run([sys.executable, str(SCRIPT), str(a), str(b), "--skip", "0", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "share no log step" in r.stderr
