"""`persam book` records what each chapter and stage cost (``_build/book_times.json``)."""
from persam_lib.book.build import BookReport


def test_the_report_totals_the_chapters_and_the_stages():
    report = BookReport(executed={"cohort": 5.04, "training": 120.46}, stages={"html": 30.0, "browser check": 9.96})
    assert report.times() == {"chapters": {"cohort": 5.0, "training": 120.5}, "stages": {"html": 30.0, "browser check": 10.0}, "total_s": 165.5}
