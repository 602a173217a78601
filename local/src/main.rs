//! `herald-local`: run the bundle locally, or mint a local token.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use local::BundleOptions;

#[derive(Parser)]
#[command(about = "Herald's local runner: the whole bundle on one local address")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the template's resources on the local endpoint and serve the bundle.
    Serve {
        #[arg(long, default_value = "template.yaml")]
        template: PathBuf,
        #[arg(long, env = "HERALD_PORT", default_value_t = 3000)]
        port: u16,
        /// Prefix of every local resource name.
        #[arg(long, default_value = "herald-local")]
        prefix: String,
        #[arg(long, env = "HERALD_LOCAL_JWT_SECRET", default_value = local::auth::DEFAULT_SECRET, hide_default_value = true)]
        jwt_secret: String,
    },
    /// Print a token for an organization and roles (comma-separated).
    Token {
        #[arg(long, default_value = "acme")]
        org: String,
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long, default_value = "local-user")]
        sub: String,
        #[arg(long, default_value_t = 12 * 3600)]
        ttl: i64,
        #[arg(long, default_value = "org_id")]
        org_claim: String,
        #[arg(long, env = "HERALD_LOCAL_JWT_SECRET", default_value = local::auth::DEFAULT_SECRET, hide_default_value = true)]
        jwt_secret: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::logging::init_lambda();
    local::emf::install(true);
    match Cli::parse().command {
        Command::Serve {
            template,
            port,
            prefix,
            jwt_secret,
        } => {
            let mut options = BundleOptions::new(template, prefix);
            options.bind = SocketAddr::from(([127, 0, 0, 1], port));
            options.jwt_secret = jwt_secret;
            let bundle = local::start(options).await?;
            println!("Herald is up at http://{}", bundle.addr);
            println!(
                "  token:  curl -s 'http://{}/local/token?org=acme&role=admin'",
                bundle.addr
            );
            println!(
                "  call:   curl -H \"Authorization: Bearer $TOKEN\" http://{}/services/templates/email/",
                bundle.addr
            );
            tokio::select! {
                () = bundle.wait() => {}
                _ = tokio::signal::ctrl_c() => println!("stopping"),
            }
        }
        Command::Token {
            org,
            role,
            sub,
            ttl,
            org_claim,
            jwt_secret,
        } => {
            let roles: Vec<&str> = role.split(',').collect();
            let auth = local::auth::LocalAuth::new(jwt_secret, org_claim);
            println!("{}", auth.mint(&sub, Some(&org), &roles, ttl)?);
        }
    }
    Ok(())
}
