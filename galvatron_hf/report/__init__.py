"""Reports on plans for people: the HTML plan report (``galvatron-hf search --report plan.html``).

Pure Python, no torch: ``plan_data`` gathers what the cost model and the search predicted into plain
dataclasses; ``plan_html`` draws them as one self-contained HTML file (inline SVG and CSS, nothing fetched).

    from galvatron_hf.report import gather_plan_report, render_plan_html
"""

from __future__ import annotations

from galvatron_hf.report.plan_data import PlanReport, gather_plan_report
from galvatron_hf.report.plan_html import render_plan_html, write_plan_html

__all__ = ["PlanReport", "gather_plan_report", "render_plan_html", "write_plan_html"]
