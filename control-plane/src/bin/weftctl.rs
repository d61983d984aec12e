//! `weftctl`: the Weft operator CLI.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_api::Duration;
use weft_certs::{SpiffeId, TrustDomain};
use weft_control::ca_dir::CaDir;

/// Weft operator CLI.
///
/// `ca` and `cert` manage a mesh CA kept in a directory and issue workload certificates from it, for
/// proxies run in explicit mode with certificate files. Exit codes: 0 success, 1 failure, 2 bad usage.
#[derive(Parser)]
#[command(name = "weftctl", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue workload certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a self-signed root CA (ECDSA P-256) in DIR: ca.crt, ca.key (0600), bundle.crt.
    Init {
        /// Directory for the CA files; must not already hold a CA.
        #[arg(long)]
        dir: PathBuf,
        /// Trust domain of the mesh, e.g. `weft.local`.
        #[arg(long, default_value = "weft.local")]
        trust_domain: TrustDomain,
        /// Lifetime of the CA certificate (e.g. `365d`).
        #[arg(long, default_value = "3650d")]
        validity: Duration,
        /// Sign leaves with an intermediate under the root (the root's key is then only used once).
        #[arg(long)]
        intermediate: bool,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a workload certificate for a SPIFFE ID: writes OUT.crt (leaf + chain), OUT.key, OUT-bundle.crt.
    ///
    /// The key and CSR are generated here and the CSR is signed by the CA in --ca-dir.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://weft.local/ns/default/sa/reviews.
        #[arg(long)]
        id: SpiffeId,
        /// Certificate lifetime (e.g. `24h`).
        #[arg(long, default_value = "24h")]
        ttl: Duration,
        /// Output path prefix.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(CaCommand::Init {
            dir,
            trust_domain,
            validity,
            intermediate,
        }) => {
            let ca = CaDir::init(&dir, &trust_domain, validity.get(), intermediate)?;
            println!(
                "created CA for trust domain {} in {} ({})",
                ca.ca.trust_domain(),
                dir.display(),
                if intermediate {
                    "root + intermediate"
                } else {
                    "root"
                }
            );
        }
        Command::Cert(CertCommand::Issue {
            ca_dir,
            id,
            ttl,
            out,
        }) => {
            let ca = CaDir::open(&ca_dir)?;
            let files = ca
                .issue(&id, ttl.get(), &out)
                .with_context(|| format!("cannot issue a certificate for {id}"))?;
            println!(
                "issued {id} (valid {ttl}): {} {} {}",
                files.cert.display(),
                files.key.display(),
                files.bundle.display()
            );
        }
    }
    Ok(())
}
