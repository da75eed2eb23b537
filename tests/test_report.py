from fedpeft.report import write_report
from fedpeft.runtime.local import run_local


def test_report_has_a_row_per_round_and_an_accuracy_plot(tiny) -> None:
    result = run_local(tiny())
    text = write_report(result.run_dir).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 2
    acc = result.rounds[-1]["eval"]["accuracy"]
    assert f"{acc:.4f}" in rows[-1]
    png = result.run_dir / "plots" / "accuracy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
