//! PDF documents Herald renders (reports, payment receipts).
//!
//! Text is drawn with an embedded Unicode font so data in any script renders instead of
//! silently vanishing; DejaVu Sans covers Latin, Greek, Cyrillic, Arabic, Hebrew and more.
//! A character the font has no glyph for (CJK ideographs, most emoji) is drawn as its code
//! point, `[U+4E2D]`, so it is visibly there rather than lost. Arabic and Hebrew are drawn
//! glyph by glyph, left to right, without contextual shaping (printpdf's shaping engine is
//! its HTML layout feature, which Herald leaves out).
//!
//! Memory: a report PDF is laid out in memory (printpdf builds the whole document before
//! saving). What it holds is the aggregated table — one row per campaign, day or actor, not
//! per message — capped at [`MAX_PDF_ROWS`] rows; a longer table ends with a note pointing
//! to the CSV format, which streams without limit.

use std::sync::LazyLock;

use printpdf::{
    Color, FontId, Op, ParsedFont, PdfDocument, PdfFontHandle, PdfPage, PdfSaveOptions, Point, Pt,
    Rect, Rgb, TextItem,
};

use crate::reports::{Cell, ReportContent};

/// DejaVu Sans (free license: `assets/fonts/DejaVuSans-LICENSE.txt`).
pub const UNICODE_FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Table rows a report PDF shows at most.
pub const MAX_PDF_ROWS: usize = 10_000;

static FONT: LazyLock<Option<ParsedFont>> =
    LazyLock::new(|| ParsedFont::from_bytes(UNICODE_FONT, 0, &mut Vec::new()));

// A4 portrait, in points.
const PAGE_WIDTH: f32 = 595.28;
const PAGE_HEIGHT: f32 = 841.89;
const MARGIN: f32 = 42.0;
const FOOTER_Y: f32 = 24.0;
const ROW_HEIGHT: f32 = 14.0;
const TABLE_FONT: f32 = 8.0;
const CHART_HEIGHT: f32 = 130.0;

/// What a report PDF says above and in its table.
#[derive(Debug, Clone)]
pub struct ReportHeading {
    pub title: String,
    pub organization: String,
    pub period: String,
    pub generated_at: String,
}

/// `text` with every character the font cannot draw replaced by `[U+XXXX]`.
pub fn visible_text(text: &str) -> String {
    let Some(font) = FONT.as_ref() else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push(' ');
        } else if c == ' '
            || font
                .lookup_glyph_index(u32::from(c))
                .is_some_and(|glyph| glyph != 0)
        {
            out.push(c);
        } else {
            out.push_str(&format!("[U+{:04X}]", u32::from(c)));
        }
    }
    out
}

/// Width of `text` at `size`, from the font's own advance widths.
fn text_width(font: &ParsedFont, text: &str, size: f32) -> f32 {
    let units: u32 = text
        .chars()
        .map(|c| {
            font.lookup_glyph_index(u32::from(c))
                .and_then(|g| font.get_glyph_width(g))
                .map_or(600, u32::from)
        })
        .sum();
    units as f32 * size / f32::from(font.units_per_em.max(1))
}

/// `text` cut (with an ellipsis) to fit `width`.
fn fit(font: &ParsedFont, text: &str, size: f32, width: f32) -> String {
    if text_width(font, text, size) <= width {
        return text.to_owned();
    }
    let mut fitted = String::new();
    for c in text.chars() {
        let mut candidate = fitted.clone();
        candidate.push(c);
        candidate.push('…');
        if text_width(font, &candidate, size) > width {
            break;
        }
        fitted.push(c);
    }
    fitted.push('…');
    fitted
}

fn rgb(r: f32, g: f32, b: f32) -> Color {
    Color::Rgb(Rgb {
        r,
        g,
        b,
        icc_profile: None,
    })
}

struct Canvas<'a> {
    font: &'a ParsedFont,
    font_id: FontId,
    pages: Vec<Vec<Op>>,
    /// The next line's baseline on the current page.
    y: f32,
}

impl Canvas<'_> {
    fn ops(&mut self) -> &mut Vec<Op> {
        if self.pages.is_empty() {
            self.pages.push(Vec::new());
        }
        let last = self.pages.len() - 1;
        &mut self.pages[last]
    }

    fn new_page(&mut self) {
        self.pages.push(Vec::new());
        self.y = PAGE_HEIGHT - MARGIN;
    }

    /// Starts a new page unless `height` still fits above the footer.
    fn ensure(&mut self, height: f32) -> bool {
        if self.y - height < MARGIN + 10.0 {
            self.new_page();
            return true;
        }
        false
    }

    fn text(&mut self, x: f32, y: f32, size: f32, text: &str) {
        let font = PdfFontHandle::External(self.font_id.clone());
        let text = visible_text(text);
        self.ops().extend([
            Op::StartTextSection,
            Op::SetFont {
                font,
                size: Pt(size),
            },
            Op::SetTextCursor {
                pos: Point { x: Pt(x), y: Pt(y) },
            },
            Op::ShowText {
                items: vec![TextItem::Text(text)],
            },
            Op::EndTextSection,
        ]);
    }

    fn fitted_text(&mut self, x: f32, y: f32, size: f32, width: f32, text: &str) {
        let text = fit(self.font, &visible_text(text), size, width);
        self.text(x, y, size, &text);
    }

    fn rect(&mut self, x: f32, y: f32, width: f32, height: f32, fill: Color) {
        self.ops().extend([
            Op::SetFillColor { col: fill },
            Op::DrawRectangle {
                rectangle: Rect {
                    mode: Some(printpdf::PaintMode::Fill),
                    ..Rect::from_xywh(Pt(x), Pt(y), Pt(width), Pt(height))
                },
            },
            Op::SetFillColor {
                col: rgb(0.0, 0.0, 0.0),
            },
        ]);
    }

    /// One table row; `widths` are the columns' widths.
    fn row(&mut self, cells: &[String], widths: &[f32], header: bool) {
        let top = self.y;
        if header {
            self.rect(
                MARGIN,
                top - ROW_HEIGHT + 3.0,
                widths.iter().sum(),
                ROW_HEIGHT,
                rgb(0.85, 0.88, 0.93),
            );
        }
        let mut x = MARGIN + 2.0;
        for (cell, width) in cells.iter().zip(widths) {
            self.fitted_text(x, top - 8.0, TABLE_FONT, width - 4.0, cell);
            x += width;
        }
        self.y -= ROW_HEIGHT;
    }

    /// A table that continues over pages, repeating its header on each.
    fn table(&mut self, columns: &[String], rows: impl Iterator<Item = Vec<String>>) {
        let usable = PAGE_WIDTH - 2.0 * MARGIN;
        // The first column names the row (campaign, day, actor) and gets a double share.
        let shares = columns.len() as f32 + 1.0;
        let widths: Vec<f32> = (0..columns.len())
            .map(|i| usable * if i == 0 { 2.0 } else { 1.0 } / shares)
            .collect();
        self.ensure(ROW_HEIGHT * 2.0);
        self.row(columns, &widths, true);
        for row in rows {
            if self.ensure(ROW_HEIGHT) {
                self.row(columns, &widths, true);
            }
            self.row(&row, &widths, false);
        }
    }

    /// Daily volume as bars (vector rectangles) over a baseline, with the scale's maximum
    /// and the first and last day labelled.
    fn chart(&mut self, daily: &[(String, i64)]) {
        self.ensure(CHART_HEIGHT + 40.0);
        self.text(MARGIN, self.y, 12.0, "Daily volume");
        self.y -= 10.0;
        let bottom = self.y - CHART_HEIGHT;
        let width = PAGE_WIDTH - 2.0 * MARGIN;
        let max = daily.iter().map(|(_, n)| *n).max().unwrap_or(0);
        if daily.is_empty() || max == 0 {
            self.text(
                MARGIN,
                bottom + CHART_HEIGHT / 2.0,
                10.0,
                "No activity in this period",
            );
        } else {
            let slot = width / daily.len() as f32;
            let bar = (slot * 0.8).max(0.5);
            for (index, (_, count)) in daily.iter().enumerate() {
                let height = (CHART_HEIGHT - 12.0) * (*count as f32) / (max as f32);
                self.rect(
                    MARGIN + index as f32 * slot + (slot - bar) / 2.0,
                    bottom,
                    bar,
                    height,
                    rgb(0.23, 0.43, 0.75),
                );
            }
            self.text(
                MARGIN,
                bottom + CHART_HEIGHT - 6.0,
                7.0,
                &format!("max {max}"),
            );
            if let Some((first, _)) = daily.first() {
                self.text(MARGIN, bottom - 10.0, 7.0, first);
            }
            if let Some((last, _)) = daily.last() {
                self.text(MARGIN + width - 40.0, bottom - 10.0, 7.0, last);
            }
        }
        // Baseline.
        self.rect(MARGIN, bottom - 0.5, width, 0.8, rgb(0.3, 0.3, 0.3));
        self.y = bottom - 28.0;
    }
}

/// Renders a report: title, organization, period, summary table, daily-volume chart and the
/// row table over as many pages as it needs, each page numbered "Page n of m".
///
/// # Errors
/// When the embedded font cannot be parsed (a build defect).
pub fn render_report(heading: &ReportHeading, content: &ReportContent) -> anyhow::Result<Vec<u8>> {
    let font = FONT
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the embedded font does not parse"))?;
    let mut document = PdfDocument::new(&heading.title);
    let font_id = document.add_font(font);
    let mut canvas = Canvas {
        font,
        font_id,
        pages: Vec::new(),
        y: PAGE_HEIGHT - MARGIN,
    };
    canvas.new_page();

    let top = canvas.y;
    canvas.text(MARGIN, top - 10.0, 20.0, &heading.title);
    canvas.text(
        MARGIN,
        top - 32.0,
        10.0,
        &format!("Organization: {}", heading.organization),
    );
    canvas.text(
        MARGIN,
        top - 46.0,
        10.0,
        &format!("Period: {}", heading.period),
    );
    canvas.text(
        MARGIN,
        top - 60.0,
        8.0,
        &format!("Generated {}", heading.generated_at),
    );
    canvas.y = top - 84.0;

    canvas.text(MARGIN, canvas.y, 12.0, "Summary");
    canvas.y -= 8.0;
    let summary: Vec<Vec<String>> = content
        .summary
        .iter()
        .map(|(label, value)| vec![label.clone(), value.clone()])
        .collect();
    canvas.table(
        &["Measure".to_owned(), "Value".to_owned()],
        summary.into_iter(),
    );
    canvas.y -= 16.0;

    canvas.chart(&content.daily);

    canvas.ensure(40.0);
    canvas.text(MARGIN, canvas.y, 12.0, "Details");
    canvas.y -= 8.0;
    if content.rows.is_empty() {
        canvas.y -= 12.0;
        canvas.text(MARGIN, canvas.y, 10.0, "No rows in this period");
    } else {
        let shown = content.rows.len().min(MAX_PDF_ROWS);
        canvas.table(
            &content.columns,
            content.rows[..shown]
                .iter()
                .map(|row| row.iter().map(Cell::display).collect()),
        );
        if content.rows.len() > shown {
            canvas.ensure(ROW_HEIGHT);
            canvas.y -= 4.0;
            let note = format!(
                "{} more rows not shown: request the CSV format for the full table",
                content.rows.len() - shown
            );
            canvas.text(MARGIN, canvas.y, 9.0, &note);
        }
    }

    let total = canvas.pages.len();
    let mut pages = Vec::with_capacity(total);
    for (index, mut ops) in std::mem::take(&mut canvas.pages).into_iter().enumerate() {
        canvas.pages = vec![Vec::new()];
        let label = format!("Page {} of {total}", index + 1);
        let width = text_width(font, &label, 8.0);
        canvas.text((PAGE_WIDTH - width) / 2.0, FOOTER_Y, 8.0, &label);
        let footer_left = format!("{} · {}", heading.title, heading.organization);
        canvas.fitted_text(MARGIN, FOOTER_Y, 8.0, 200.0, &footer_left);
        ops.append(&mut canvas.pages[0]);
        pages.push(PdfPage::new(printpdf::Mm(210.0), printpdf::Mm(297.0), ops));
    }
    let mut warnings = Vec::new();
    Ok(document
        .with_pages(pages)
        .save(&PdfSaveOptions::default(), &mut warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heading() -> ReportHeading {
        ReportHeading {
            title: "Campaign performance".into(),
            organization: "acme".into(),
            period: "2026-01-01 – 2026-01-31".into(),
            generated_at: "2026-02-01T00:00:00Z".into(),
        }
    }

    fn page_text(document: &lopdf::Document, page: u32) -> String {
        document.extract_text(&[page]).unwrap()
    }

    #[test]
    fn characters_the_font_lacks_become_visible_code_points() {
        assert_eq!(visible_text("Привет Ωμέγα مرحبا"), "Привет Ωμέγα مرحبا");
        assert_eq!(visible_text("中x"), "[U+4E2D]x");
    }

    #[test]
    fn a_long_report_has_numbered_pages_a_chart_and_unicode_text() {
        let content = ReportContent {
            summary: vec![("Emails".into(), "300".into())],
            daily: (1..=30)
                .map(|d| (format!("2026-01-{d:02}"), d * 3))
                .collect(),
            columns: vec!["campaign".into(), "sent".into()],
            rows: (0..300)
                .map(|n| {
                    vec![
                        Cell::text(format!("Кампания {n} Ελληνικά العربية 中")),
                        Cell::Int(n),
                    ]
                })
                .collect(),
        };
        let bytes = render_report(&heading(), &content).unwrap();
        let document = lopdf::Document::load_mem(&bytes).unwrap();
        let pages = document.get_pages().len() as u32;
        assert!(pages >= 6, "{pages} pages");
        let first = page_text(&document, 1);
        for expected in [
            "Campaign performance",
            "Organization: acme",
            "Summary",
            "Daily volume",
            &format!("Page 1 of {pages}"),
        ] {
            assert!(first.contains(expected), "{expected:?} not in {first}");
        }
        let last = page_text(&document, pages);
        assert!(last.contains(&format!("Page {pages} of {pages}")), "{last}");
        assert!(last.contains("Кампания 299"), "{last}");
        assert!(last.contains("Ελληνικά"), "{last}");
        assert!(last.contains("[U+4E2D]"), "{last}");
        // The chart is vector rectangles (`re` … `f`), one per day with activity.
        let (_, page_id) = document.get_pages().into_iter().next().unwrap();
        let content = document.get_and_decode_page_content(page_id).unwrap();
        let rectangles = content
            .operations
            .iter()
            .filter(|op| op.operator == "re")
            .count();
        assert!(rectangles >= 30, "{rectangles} rectangles");
    }
}
