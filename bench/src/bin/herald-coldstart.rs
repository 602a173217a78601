//! `herald-coldstart`: the cold-start benchmark (docs/PERFORMANCE.md). Run it through
//! `scripts/coldstart.sh`, which builds the release binaries and starts the local services.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let options = bench::coldstart::Options::parse();
    let report = bench::coldstart::run(&options).await?;
    println!("{}", report.table());
    if let Some(path) = &options.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)?;
    }
    Ok(())
}
