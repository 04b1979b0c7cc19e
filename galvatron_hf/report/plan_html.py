"""Draw a :class:`~galvatron_hf.report.plan_data.PlanReport` as one self-contained HTML page.

Inline CSS and SVG only: no script, no font or image fetched, so the file opens anywhere (a laptop offline,
a CI artifact viewer). The page has four parts: the layer strip (each block's layout and stage), memory per
stage at the two moments the cost model prices, the step timeline (pipeline fill, work by kind, waiting,
drain) and the comparison with uniform and plain data-parallel plans. Numbers come from the report as
gathered; this module only places and formats them. Pure Python: no torch.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from galvatron_hf.report import svg as s
from galvatron_hf.report.plan_data import (
    MEMORY_PARTS,
    TIME_PARTS,
    ComparisonRow,
    Measured,
    PlanReport,
    Span,
    StageMemory,
    StageTime,
    Strategy,
    Timeline,
)

WIDTH = 1000  # SVG user units; the page column is about this wide, so 1 unit ~ 1 CSS pixel at laptop width
INK, MUTED, GRID, BUDGET = "#1f2328", "#59636e", "#d8dee4", "#b42318"
STRATEGY_COLOURS = (
    "#2f6db5", "#e07b1f", "#2e9a5b", "#c0392b", "#7d55b5", "#138a91", "#a0522d", "#c2488f", "#5d6d7e", "#7c8a12",
)  # fmt: skip
PART_COLOURS = {
    "parameters": "#2f6db5",
    "gradients": "#e07b1f",
    "optimizer states": "#2e9a5b",
    "activations": "#c2488f",
    "workspace": "#7d55b5",
    "reserved": "#8d99a6",
    "compute": "#2f6db5",
    "communication": "#e07b1f",
    "memory-bound": "#7d55b5",
}
IDLE, WAITING = "#c3cbd4", "#e3e8ee"
MEASURED = "#111827"  # measured values: a near-black dotted line over the predicted drawing


def render_plan_html(report: PlanReport) -> str:
    """The whole page as a string."""
    sections = [
        _header(report),
        _layers_section(report),
        _memory_section(report),
        _timeline_section(report.timeline, report.measured),
    ]
    if report.comparison:
        sections.append(_comparison_section(report.comparison))
    body = "\n".join(sections) + f'\n<footer>{escape(report.footnote)}</footer>'
    title = escape(f"Plan: {report.title}")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n"
    )


def write_plan_html(path: str | Path, report: PlanReport) -> Path:
    path = Path(path)
    path.write_text(render_plan_html(report), encoding="utf-8")
    return path


# ----- header ---------------------------------------------------------------------------------------------
def _header(report: PlanReport) -> str:
    facts = "".join(f"<span><b>{escape(k)}</b> {escape(v)}</span>" for k, v in report.facts)
    return (
        f'<header><div class="eyebrow">galvatron-hf plan</div><h1>{escape(report.title)}</h1>'
        f'<div class="facts">{facts}</div>{_metrics(report)}</header>'
    )


def _metrics(report: PlanReport) -> str:
    h = report.headline
    cards = [
        ("step time", s.seconds(h.step_time_s), "one optimizer step"),
        ("tokens / s", s.count(h.tokens_per_s), f"{h.samples_per_s:,.2f} samples/s"),
        ("MFU", s.percent(h.mfu), f"{h.source} costs"),
        ("peak memory", s.gigabytes(h.peak_gb), f"of {h.budget_gb:g} GB budget"),
        (
            "batch",
            f"{h.global_batch_size:,}",
            f"{h.num_micro_batches} micro-batch{'es' if h.num_micro_batches > 1 else ''} of {h.micro_batch_size}",
        ),
        ("pipeline", f"{h.pp} stage{'s' if h.pp > 1 else ''}", _bubble_text(report.timeline)),
    ]
    if report.measured is not None:
        cards[1:1] = _measured_cards(report.measured, h.step_time_s, h.peak_gb)
    return '<div class="metrics">' + "".join(_metric(*card) for card in cards) + "</div>"


def _measured_cards(measured: Measured, predicted_step_s: float, predicted_peak_gb: float) -> list[tuple[str, ...]]:
    """The run's measured step time and peak memory, each with the prediction's error."""
    if measured.step_time_s is None:
        step = ("measured step", "n/a", "too few steps to time")
    else:
        error = _error(predicted_step_s, measured.step_time_s)
        step = ("measured step", s.seconds(measured.step_time_s), f"mean of {measured.steps} steps; prediction {error}")
    peak = max(measured.peak_memory_gb, default=0.0)
    error = _error(predicted_peak_gb, peak)
    memory = ("measured peak", s.gigabytes(peak), f"{measured.memory_kind}; prediction {error}")
    return [step, memory]


def _error(predicted: float, measured: float) -> str:
    if measured <= 0:
        return "n/a"
    return f"{(predicted - measured) / measured:+.0%}"


def _bubble_text(timeline: Timeline) -> str:
    if len(timeline.stages) == 1:
        return "no pipeline bubble"
    return f"bubble {s.percent(timeline.bubble_share)} of the step"


def _metric(name: str, value: str, sub: str) -> str:
    return (
        f'<div class="metric"><div class="name">{escape(name)}</div><div class="value">{escape(value)}</div>'
        f'<div class="sub">{escape(sub)}</div></div>'
    )


def _section(title: str, lead: str, content: str) -> str:
    return f"<section><h2>{escape(title)}</h2><p class=\"lead\">{escape(lead)}</p>{content}</section>"


def _legend(items: list[tuple[str, str]]) -> str:
    """HTML legend: (swatch CSS background, label)."""
    spans = "".join(
        f'<span><i class="sw" style="background:{background}"></i>{escape(label)}</span>' for background, label in items
    )
    return f'<div class="legend">{spans}</div>'


# ----- the layer strip ------------------------------------------------------------------------------------
STRIP_TOP, CELL_HEIGHT, STAGE_GAP, VOCAB_WIDTH = 34, 42, 10, 34


def _strategy_colours(report: PlanReport) -> dict[Strategy, str]:
    return {st: STRATEGY_COLOURS[i % len(STRATEGY_COLOURS)] for i, st in enumerate(report.strategies)}


def _layers_section(report: PlanReport) -> str:
    colours = _strategy_colours(report)
    legend = [(colour, strategy.label) for strategy, colour in colours.items()]
    if any(block.checkpoint for block in report.blocks):
        legend.append((f"repeating-linear-gradient(45deg,{INK} 0 2px,#fff 2px 5px)", "activation checkpointing"))
    lead = (
        "Each cell is one transformer block, coloured by its layout (tensor-parallel × data-parallel degree and "
        "data-parallel flavour); the end cells hold the embedding and the head. Hover a cell for its details."
    )
    return _section("Layers", lead, _strip_svg(report, colours) + _legend(legend) + _runs_table(report))


def _block_positions(report: PlanReport) -> tuple[dict[int, float], float, float]:
    """x of each block, the cell width, and where the head cell starts: stages separated by a gap."""
    vocab = len(report.vocab)
    stages = len(report.stage_spans)
    room = WIDTH - vocab * (VOCAB_WIDTH + STAGE_GAP) - (stages - 1) * STAGE_GAP
    cell = room / max(len(report.blocks), 1)
    x = VOCAB_WIDTH + STAGE_GAP if any(cell.at_start for cell in report.vocab) else 0.0
    positions: dict[int, float] = {}
    for block in report.blocks:
        if block.index and block.stage != report.blocks[block.index - 1].stage:
            x += STAGE_GAP
        positions[block.index] = x
        x += cell
    return positions, cell, x + STAGE_GAP


def _strip_svg(report: PlanReport, colours: dict[Strategy, str]) -> str:
    positions, cell, head_x = _block_positions(report)
    body = ["<defs>" + s.hatch_pattern("ckpt", "rgba(255,255,255,0.55)", "none") + "</defs>"]
    body += _vocab_cells(report, colours, head_x)
    for block in report.blocks:
        body += _block_cell(block, positions[block.index], cell, colours)
    body += [_span_bracket(span, positions, cell, 18, above=True) for span in report.stage_spans]
    body += _index_ticks(report, positions, cell)
    bottom = STRIP_TOP + CELL_HEIGHT + 24
    if report.kind_spans:
        body += [_span_bracket(span, positions, cell, bottom + 8, above=False) for span in report.kind_spans]
        bottom += 30
    return s.svg(WIDTH, bottom + 4, body, f"layer strip of {len(report.blocks)} blocks")


def _block_cell(block, x: float, cell: float, colours: dict[Strategy, str]) -> list[str]:
    tip = (
        f"block {block.index} ({block.name}): stage {block.stage}, {block.strategy.label}"
        f"{', activation checkpointing' if block.checkpoint else ''}"
    )
    width = max(cell - 1.0, 0.5)
    parts = [s.rect(x, STRIP_TOP, width, CELL_HEIGHT, tip=tip, fill=colours[block.strategy], rx=2)]
    if block.checkpoint:
        parts.append(s.rect(x, STRIP_TOP, width, CELL_HEIGHT, fill="url(#ckpt)", rx=2, pointer_events="none"))
    return parts


def _vocab_cells(report: PlanReport, colours: dict[Strategy, str], head_x: float) -> list[str]:
    parts = []
    for cell in report.vocab:
        x, label = (0.0, "emb.") if cell.at_start else (head_x, "head")
        tip = f"{', '.join(cell.names)}: stage {cell.stage}, {cell.strategy.label}"
        parts.append(s.rect(x, STRIP_TOP, VOCAB_WIDTH, CELL_HEIGHT, tip=tip, fill=colours[cell.strategy], rx=4))
        parts.append(
            s.text(x + VOCAB_WIDTH / 2, STRIP_TOP + CELL_HEIGHT + 16, label, text_anchor="middle", font_size=11,
                   fill=MUTED)
        )  # fmt: skip
    return parts


def _span_bracket(span: Span, positions: dict[int, float], cell: float, y: float, *, above: bool) -> str:
    """A thin bracket over (or under) blocks first..last with its label, shortened when it does not fit."""
    x1, x2 = positions[span.first], positions[span.last] + cell - 1
    tick = 5 if above else -5
    path = f"M{x1:.1f},{y + tick} L{x1:.1f},{y} L{x2:.1f},{y} L{x2:.1f},{y + tick}"
    label = _fitting_label(span.label, x2 - x1)
    text_y = y - 6 if above else y + 16
    return (
        f'<path d="{path}" fill="none" stroke="{MUTED}" stroke-width="1"/>'
        + s.text((x1 + x2) / 2, text_y, label, text_anchor="middle", font_size=12, fill=INK)
    )


def _fitting_label(label: str, width: float, char_width: float = 6.6) -> str:
    """The label, its part before " · ", or its first word's initial and number, whichever fits."""
    for candidate in (label, label.split(" · ")[0], _initials(label)):
        if len(candidate) * char_width <= width:
            return candidate
    return ""


def _initials(label: str) -> str:
    words = label.split(" · ")[0].split()
    return words[0][0].upper() + (words[1] if len(words) > 1 else "")


def _index_ticks(report: PlanReport, positions: dict[int, float], cell: float) -> list[str]:
    every = next((k for k in (1, 2, 5, 10, 20, 50, 100) if k * cell >= 26), 100)
    y = STRIP_TOP + CELL_HEIGHT + 16
    return [
        s.text(positions[b.index] + cell / 2, y, str(b.index), text_anchor="middle", font_size=11, fill=MUTED)
        for b in report.blocks
        if b.index % every == 0
    ]


def _runs_table(report: PlanReport) -> str:
    rows = "".join(
        f"<tr><td>{run.stage}</td><td>{_blocks_text(run.first, run.last)}</td>"
        f"<td>{escape(run.strategy.label)}</td><td>{'yes' if run.checkpoint else ''}</td></tr>"
        for run in report.runs
    )
    vocab = "".join(
        f"<tr><td>{cell.stage}</td><td>{escape(', '.join(cell.names))}</td>"
        f"<td>{escape(cell.strategy.label)}</td><td></td></tr>"
        for cell in report.vocab
    )
    return (
        "<details><summary>Plan as a table</summary><table><thead><tr><th>stage</th><th>layers</th>"
        f"<th>layout</th><th>checkpointed</th></tr></thead><tbody>{vocab}{rows}</tbody></table></details>"
    )


def _blocks_text(first: int, last: int) -> str:
    return f"block {first}" if first == last else f"blocks {first}–{last}"


# ----- memory per stage -----------------------------------------------------------------------------------
PLOT_LEFT, PLOT_RIGHT, MEMORY_TOP, MEMORY_BOTTOM = 58, 12, 24, 250


def _memory_section(report: PlanReport) -> str:
    lead = (
        "Per GPU, for each pipeline stage, at the two moments the cost model prices: the start of backward "
        "(every activation held) and the optimizer step (this step's gradients complete). The taller one is the "
        "stage's peak; the other is drawn faded. The dashed line is the budget"
        + ("; the dotted line over each stage is the peak the training run measured." if report.measured else ".")
    )
    legend = [(PART_COLOURS[part], part) for part in MEMORY_PARTS]
    return _section("Memory per GPU", lead, _memory_svg(report) + _legend(legend))


def _memory_svg(report: PlanReport) -> str:
    budget = report.headline.budget_gb
    measured = report.measured.peak_memory_gb if report.measured is not None else ()
    top = max([budget, *measured, *(m.total_gb for stage in report.memory for m in stage.moments)])
    ticks = s.nice_ticks(top * 1.05, 6)
    scale = (MEMORY_BOTTOM - MEMORY_TOP) / ticks[-1]
    body = _y_axis(ticks, scale, "GB")
    group = (WIDTH - PLOT_LEFT - PLOT_RIGHT) / len(report.memory)
    for index, stage in enumerate(report.memory):
        body += _stage_bars(stage, PLOT_LEFT + index * group, group, scale)
        if index < len(measured):
            body += _measured_mark(measured[index], PLOT_LEFT + index * group, group, scale)
    y = MEMORY_BOTTOM - budget * scale
    body.append(s.line(PLOT_LEFT, y, WIDTH - PLOT_RIGHT, y, stroke=BUDGET, stroke_width=1.6, stroke_dasharray="6 4"))
    body.append(
        s.text(WIDTH - PLOT_RIGHT, y - 6, f"budget {budget:g} GB", text_anchor="end", font_size=12, fill=BUDGET,
               font_weight=600)
    )  # fmt: skip
    return s.svg(WIDTH, MEMORY_BOTTOM + 46, body, "memory per stage")


def _measured_mark(gb: float, x: float, group: float, scale: float) -> list[str]:
    y = MEMORY_BOTTOM - gb * scale
    left, right = x + group * 0.12, x + group * 0.88
    return [
        s.line(left, y, right, y, stroke=MEASURED, stroke_width=2, stroke_dasharray="2 3"),
        s.text(right, y - 4, f"measured {gb:.1f}", text_anchor="end", font_size=11, fill=MEASURED),
    ]


def _y_axis(ticks: list[float], scale: float, unit: str) -> list[str]:
    parts = []
    for value in ticks:
        y = MEMORY_BOTTOM - value * scale
        parts.append(s.line(PLOT_LEFT, y, WIDTH - PLOT_RIGHT, y, stroke=GRID, stroke_width=1))
        parts.append(s.text(PLOT_LEFT - 8, y + 4, f"{value:g}", text_anchor="end", font_size=11, fill=MUTED))
    parts.append(s.text(PLOT_LEFT - 8, MEMORY_TOP - 10, unit, text_anchor="end", font_size=11, fill=MUTED))
    return parts


def _stage_bars(stage: StageMemory, x: float, group: float, scale: float) -> list[str]:
    bar = min(54.0, group * 0.3)
    gap = min(10.0, group * 0.06)
    start = x + (group - 2 * bar - gap) / 2
    parts = []
    for offset, moment in enumerate(stage.moments):
        parts += _stacked_bar(stage, moment, start + offset * (bar + gap), bar, scale)
    label_y = MEMORY_BOTTOM + 34
    label = _fitting_label(stage.label, group - 4)
    parts.append(s.text(x + group / 2, label_y, label, text_anchor="middle", font_size=12, fill=INK))
    return parts


def _stacked_bar(stage: StageMemory, moment, x: float, width: float, scale: float) -> list[str]:
    opacity = 1.0 if moment.is_peak else 0.38
    y = MEMORY_BOTTOM
    parts = []
    for name, gb in moment.parts:
        height = gb * scale
        if height <= 0:
            continue
        y -= height
        tip = f"stage {stage.stage}, {moment.name}: {name} {s.gigabytes(gb)}"
        parts.append(s.rect(x, y, width, height, tip=tip, fill=PART_COLOURS[name], fill_opacity=opacity))
    weight = 700 if moment.is_peak else 400
    total = f"{moment.total_gb:.1f}"
    parts.append(s.text(x + width / 2, y - 5, total, text_anchor="middle", font_size=11, font_weight=weight))
    short = "bwd" if moment.name.startswith("backward") else "opt"
    if width >= 20:
        parts.append(s.text(x + width / 2, MEMORY_BOTTOM + 15, short, text_anchor="middle", font_size=10.5,
                            fill=MUTED))  # fmt: skip
    return parts


# ----- the step timeline ----------------------------------------------------------------------------------
ROW_HEIGHT, ROW_GAP, LABEL_WIDTH, SHARE_WIDTH, TIMELINE_TOP = 26, 10, 70, 78, 8


def _timeline_section(timeline: Timeline, measured: Measured | None = None) -> str:
    m = timeline.num_micro_batches
    lead = (
        f"One step: {m} micro-batch{'es' if m > 1 else ''} per stage"
        + (f", {timeline.schedule.upper()} schedule" if len(timeline.stages) > 1 else "")
        + ". A stage waits for the earlier stages' first micro-batch (fill), works, waits whenever the slowest "
        "stage paces it, and idles while the later stages finish (drain); its micro-batches are drawn together "
        f"by kind of work. {_bubble_text(timeline).capitalize()}"
        + (f" ({s.seconds(timeline.bubble_s)}); ★ marks the slowest stage." if len(timeline.stages) > 1 else ".")
        + (" The dotted line is the step time the training run measured." if _measured_step(measured) else "")
    )
    legend = [(PART_COLOURS[p], p) for p in TIME_PARTS]
    legend += [
        (f"repeating-linear-gradient(45deg,{IDLE} 0 2px,#f6f8fa 2px 5px)", "idle: pipeline fill and drain"),
        (WAITING, "waiting for the slowest stage"),
    ]
    return _section("Step timeline", lead, _timeline_svg(timeline, _measured_step(measured)) + _legend(legend))


def _measured_step(measured: Measured | None) -> float | None:
    return measured.step_time_s if measured is not None else None


def _timeline_svg(timeline: Timeline, measured_step_s: float | None = None) -> str:
    plot = WIDTH - LABEL_WIDTH - SHARE_WIDTH
    scale = plot / max(timeline.step_s, measured_step_s or 0.0)
    body = ["<defs>" + s.hatch_pattern("idle", IDLE, "#f6f8fa") + "</defs>"]
    for row, stage in enumerate(timeline.stages):
        body += _timeline_row(stage, TIMELINE_TOP + row * (ROW_HEIGHT + ROW_GAP), scale, row == timeline.bottleneck)
    axis_y = TIMELINE_TOP + len(timeline.stages) * (ROW_HEIGHT + ROW_GAP)
    body += _time_axis(timeline.step_s, scale, axis_y)
    if measured_step_s is not None:
        x = LABEL_WIDTH + measured_step_s * scale
        body.append(s.line(x, TIMELINE_TOP - 4, x, axis_y, stroke=MEASURED, stroke_width=2, stroke_dasharray="2 3"))
        label = f"measured {s.seconds(measured_step_s)}"
        body.append(s.text(x - 4, axis_y + 26, label, text_anchor="end", font_size=11, fill=MEASURED))
    return s.svg(WIDTH, axis_y + 34, body, "predicted step timeline")


def _timeline_row(stage: StageTime, y: float, scale: float, slowest: bool) -> list[str]:
    label = stage.label + (" ★" if slowest else "")
    parts = [s.text(0, y + ROW_HEIGHT / 2 + 4, label, font_size=12.5, font_weight=600 if slowest else 400)]
    x = float(LABEL_WIDTH)
    for name, seconds, fill in _row_segments(stage):
        width = seconds * scale
        if width > 0:
            tip = f"{stage.label}: {name} {s.seconds(seconds)}"
            parts.append(s.rect(x, y, width, ROW_HEIGHT, tip=tip, fill=fill))
            x += width
    share = f"{s.percent(stage.busy_share)} busy"
    parts.append(s.text(WIDTH, y + ROW_HEIGHT / 2 + 4, share, text_anchor="end", font_size=11.5, fill=MUTED))
    return parts


def _row_segments(stage: StageTime) -> list[tuple[str, float, str]]:
    segments = [("idle (pipeline fill)", stage.fill_s, "url(#idle)")]
    segments += [(name, seconds, PART_COLOURS[name]) for name, seconds in stage.parts]
    segments.append(("waiting for the slowest stage", stage.waiting_s, WAITING))
    segments.append(("idle (pipeline drain)", stage.drain_s, "url(#idle)"))
    return segments


def _time_axis(step_s: float, scale: float, y: float) -> list[str]:
    parts = [s.line(LABEL_WIDTH, y - ROW_GAP / 2, WIDTH - SHARE_WIDTH, y - ROW_GAP / 2, stroke=MUTED)]
    for value in s.nice_ticks(step_s, 6):
        if value > step_s * 1.0001:
            break
        x = LABEL_WIDTH + value * scale
        parts.append(s.line(x, y - ROW_GAP / 2, x, y, stroke=MUTED))
        parts.append(s.text(x, y + 12, s.seconds_tick(value), text_anchor="middle", font_size=11, fill=MUTED))
    return parts


# ----- comparison -----------------------------------------------------------------------------------------
def _comparison_section(rows: tuple[ComparisonRow, ...]) -> str:
    lead = (
        "The searched plan against the fastest plan with one layout for every block, and against plain data "
        "parallelism (every GPU a whole copy: DDP; or everything sharded: ZeRO-3), each at its best batch."
    )
    fastest = max((row.tokens_per_s for row in rows if row.tokens_per_s), default=1.0)
    body = "".join(_comparison_row(row, fastest) for row in rows)
    head = (
        '<tr><th>plan</th><th class="num">tokens/s</th><th class="bar"></th><th class="num">MFU</th>'
        '<th class="num">peak</th><th class="num">searched plan</th></tr>'
    )
    return _section("Compared with simpler plans", lead, f'<table class="compare">{head}{body}</table>')


def _comparison_row(row: ComparisonRow, fastest: float) -> str:
    name = f"<td><b>{escape(row.label)}</b><div class=\"detail\">{escape(row.detail)}</div></td>"
    if row.fits is None:
        return f'<tr>{name}<td colspan="5" class="miss">no such plan: the batch does not split over the GPUs</td></tr>'
    if not row.fits:
        needs = f"does not fit: needs {s.gigabytes(row.peak_gb)} per GPU"
        return f'<tr>{name}<td colspan="5" class="miss">{escape(needs)}</td></tr>'
    share = 100 * row.tokens_per_s / fastest
    ratio = "" if row.label == "searched plan" else f"{row.searched_over_this:.2f}× as fast"
    return (
        f'<tr>{name}<td class="num">{s.count(row.tokens_per_s)}</td>'
        f'<td class="bar"><div class="track"><div class="fill" style="width:{share:.1f}%"></div></div></td>'
        f'<td class="num">{s.percent(row.mfu)}</td><td class="num">{s.gigabytes(row.peak_gb)}</td>'
        f'<td class="num">{ratio}</td></tr>'
    )


CSS = """
:root{--ink:#1f2328;--muted:#59636e;--line:#d8dee4;--panel:#ffffff;--page:#f1f3f6;--accent:#2f6db5}
*{box-sizing:border-box}
body{margin:0;background:var(--page);color:var(--ink);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Noto Sans","Liberation Sans",Arial,sans-serif}
main{max-width:1064px;margin:0 auto;padding:28px 24px 40px}
header{margin-bottom:18px}
.eyebrow{font-size:12px;font-weight:600;letter-spacing:.08em;text-transform:uppercase;color:var(--accent)}
h1{font-size:27px;line-height:1.25;margin:2px 0 6px;letter-spacing:-.01em}
.facts{display:flex;flex-wrap:wrap;gap:2px 22px;font-size:14px;color:var(--muted);margin-bottom:16px}
.facts b{color:var(--ink);font-weight:600;margin-right:4px}
.metrics{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px}
.metric{background:var(--panel);border:1px solid var(--line);border-radius:10px;padding:10px 14px}
.metric .name{font-size:11.5px;font-weight:600;letter-spacing:.06em;text-transform:uppercase;color:var(--muted)}
.metric .value{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums;white-space:nowrap}
.metric .sub{font-size:12.5px;color:var(--muted)}
section{background:var(--panel);border:1px solid var(--line);border-radius:12px;padding:18px 22px 16px;margin:0 0 16px}
h2{font-size:18px;margin:0 0 2px}
p.lead{margin:0 0 14px;font-size:14px;color:var(--muted);max-width:84ch}
svg{display:block;width:100%;height:auto;overflow:visible}
svg text{font-family:inherit;fill:var(--ink)}
.legend{display:flex;flex-wrap:wrap;gap:6px 20px;margin-top:12px;font-size:13.5px}
.legend .sw{display:inline-block;width:14px;height:14px;border-radius:3px;margin-right:7px;vertical-align:-2px}
details{margin-top:12px;font-size:14px}
summary{cursor:pointer;color:var(--accent)}
table{border-collapse:collapse;width:100%;font-size:14px;font-variant-numeric:tabular-nums;margin-top:8px}
th{font-size:12px;font-weight:600;letter-spacing:.04em;text-transform:uppercase;color:var(--muted);text-align:left}
th,td{padding:7px 10px;border-bottom:1px solid #e7ebef;vertical-align:middle}
.num{text-align:right;white-space:nowrap}
.detail{font-size:12.5px;color:var(--muted)}
.compare td.bar{width:30%}
.track{height:12px;background:#eef1f4;border-radius:6px;overflow:hidden}
.fill{height:100%;background:var(--accent);border-radius:6px}
.miss{color:#8a2b1d}
footer{font-size:12.5px;color:var(--muted);margin-top:8px}
"""
