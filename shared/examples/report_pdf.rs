//! Renders a sample multi-page report PDF (Latin, Cyrillic, Greek, Arabic and a CJK
//! character the font lacks) to look at, e.g. as PNG with poppler-utils:
//!
//! ```sh
//! cargo run -p herald-shared --example report_pdf -- /tmp/report.pdf
//! pdftoppm -png -r 80 -f 1 -l 2 /tmp/report.pdf /tmp/report-page
//! ```

use shared::pdf::{ReportHeading, render_report};
use shared::reports::content::campaign_performance;
use shared::store::CampaignStats;

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "report.pdf".to_owned());
    let names = ["spring", "Весна", "Άνοιξη", "ربيع", "春 launch", "=cmd()"];
    let campaigns: Vec<CampaignStats> = (0..120)
        .map(|n| CampaignStats {
            campaign: format!("{} {n}", names[n % names.len()]),
            recipients: 400,
            sent: 398,
            delivered: 390 - i64::try_from(n % 7).unwrap_or(0),
            opened: 130,
            clicked: 30,
            bounced: 8,
            failed: 0,
        })
        .collect();
    let daily = (1..=30)
        .map(|d| (format!("2026-11-{d:02}"), (d * 37 % 23 + 5) * 40))
        .collect();
    let content = campaign_performance(&campaigns, daily);
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
