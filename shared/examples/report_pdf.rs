//! Renders a sample multi-page report PDF (Latin, Cyrillic, Greek, Arabic and a CJK
//! character the font lacks) to look at, e.g. as PNG with poppler-utils:
//!
//! ```sh
//! cargo run -p herald-shared --example report_pdf -- /tmp/report.pdf
//! pdftoppm -png -r 80 -f 1 -l 2 /tmp/report.pdf /tmp/report-page
//! ```

use shared::pdf::{ReportHeading, render_report};
use shared::reports::{Cell, ReportContent};

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "report.pdf".to_owned());
    let names = ["spring", "Весна", "Άνοιξη", "ربيع", "春 launch", "=cmd()"];
    let content = ReportContent {
        summary: vec![
            ("Campaigns".into(), "120".into()),
            ("Emails".into(), "48000".into()),
            ("Delivery rate".into(), "97.5%".into()),
        ],
        daily: (1..=30)
            .map(|d| (format!("2026-11-{d:02}"), (d * 37 % 23 + 5) * 40))
            .collect(),
        columns: [
            "campaign",
            "recipients",
            "sent",
            "delivered",
            "delivery_rate",
        ]
        .map(str::to_owned)
        .to_vec(),
        rows: (0..120)
            .map(|n| {
                vec![
                    Cell::text(format!("{} {n}", names[n as usize % names.len()])),
                    Cell::Int(400),
                    Cell::Int(398),
                    Cell::Int(390 - n % 7),
                    Cell::Percent(0.975),
                ]
            })
            .collect(),
    };
    let heading = ReportHeading {
        title: "Campaign performance".into(),
        organization: "acme".into(),
        period: "2026-11-01 00:00 UTC – 2026-12-01 00:00 UTC".into(),
        generated_at: "2026-12-01T02:00:00Z".into(),
    };
    std::fs::write(&path, render_report(&heading, &content)?)?;
    println!("wrote {path}");
    Ok(())
}
