//! `weftctl`: the Weft operator CLI.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_api::operator::{
    ApplyRequest, ApplyResponse, SourceFile, Status, TokenCreated, TokenInfo, TokenRequest,
};
use weft_api::resources::{Kind, Resource};
use weft_api::Duration;
use weft_certs::{SpiffeId, TrustDomain};
use weft_control::ca_dir::CaDir;
use weft_control::cli::client::{Client, ClientError};
use weft_control::cli::render;

/// Weft operator CLI.
///
/// Talks to weft-control's operator API (`--server`, default http://127.0.0.1:15014) with the operator
/// token the control plane wrote to <state-dir>/operator.token: apply, get and delete resources, create
/// and revoke join tokens, see every proxy's status. `ca` and `cert` work offline on a CA directory, for
/// proxies run in explicit mode with certificate files.
///
/// Examples:
///   weftctl apply -f examples/resources/           # every *.yaml in the directory
///   weftctl apply -f route.yaml --dry-run          # validate and show the diff, change nothing
///   weftctl get services -A
///   weftctl token create --namespace default --service-account reviews --ttl 1h
///   weftctl status
///
/// Exit codes: 0 done (and every affected proxy acknowledged the change); 1 refused or failed (bad
/// input, server error, control plane unreachable); 2 bad usage; 3 applied, but not every affected proxy
/// confirmed it in time (a NACK, a disconnect or the timeout; the output names them).
#[derive(Parser)]
#[command(name = "weftctl", version, about, long_about)]
struct Cli {
    /// The control plane's operator API.
    #[arg(
        long,
        global = true,
        env = "WEFT_SERVER",
        default_value = "http://127.0.0.1:15014"
    )]
    server: String,
    /// The operator token file (written by weft-control to <state-dir>/operator.token).
    #[arg(
        long,
        global = true,
        env = "WEFT_TOKEN_FILE",
        default_value = "/var/lib/weft/operator.token"
    )]
    token_file: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply resource documents from files, directories (every *.yaml / *.yml, sorted) or `-` (stdin).
    ///
    /// The control plane validates the whole batch (file, line, field and reason for every problem) and
    /// changes nothing if any document is refused. Unless --no-wait, waits until every proxy whose config
    /// changed has acknowledged it, and names those that refused (NACK) or did not answer.
    Apply {
        /// File, directory or `-`; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate and print the diff; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not wait for proxies to acknowledge.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for acknowledgements.
        #[arg(long, default_value = "10s")]
        timeout: Duration,
    },
    /// Show resources: `weftctl get services`, `weftctl get route reviews -o yaml`.
    Get {
        /// Service, Workload, HTTPRoute, AuthorizationPolicy or MeshConfig (plural and short forms work).
        kind: String,
        name: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete a resource (refused while another resource refers to it).
    Delete {
        kind: String,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        no_wait: bool,
        #[arg(long, default_value = "10s")]
        timeout: Duration,
    },
    /// Join tokens: how a proxy gets its first certificate.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Every proxy: identity, readiness, config versions sent and acknowledged, last NACK, certificate
    /// expiry, when it was last seen.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Manage the mesh certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue workload certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a join token bound to one service account. Prints the token alone on stdout.
    Create {
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = "1h")]
        ttl: Duration,
    },
    /// List join tokens (never their secrets).
    List {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Revoke a join token by id: it is refused from now on.
    Revoke { id: String },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(ClientError::Refused { details, .. }) = e.downcast_ref::<ClientError>() {
                for d in details {
                    eprintln!("  {d}");
                }
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let remote = |timeout: std::time::Duration| {
        Client::new(
            &cli.server,
            &cli.token_file,
            timeout + std::time::Duration::from_secs(10),
        )
    };
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")
    };
    match cli.command {
        Command::Apply {
            files,
            dry_run,
            no_wait,
            timeout,
        } => {
            let client = remote(timeout.get())?;
            let files = collect_files(&files)?;
            let query = query(dry_run, no_wait, timeout);
            let resp: ApplyResponse = rt()?
                .block_on(client.post(&format!("/v1/apply{query}"), &ApplyRequest { files }))?;
            print!("{}", render::apply(&resp));
            return Ok(confirmed(&resp));
        }
        Command::Get {
            kind,
            name,
            namespace,
            all_namespaces,
            output,
        } => {
            let kind = parse_kind(&kind)?;
            let client = remote(std::time::Duration::ZERO)?;
            let path = match (&name, all_namespaces) {
                (Some(n), _) => format!("/v1/resources/{kind}/{namespace}/{n}"),
                (None, true) => format!("/v1/resources/{kind}"),
                (None, false) => format!("/v1/resources/{kind}/{namespace}"),
            };
            let found: Vec<serde_json::Value> = rt()?.block_on(client.get(&path))?;
            print!("{}", show_resources(kind, &found, output)?);
        }
        Command::Delete {
            kind,
            name,
            namespace,
            no_wait,
            timeout,
        } => {
            let kind = parse_kind(&kind)?;
            let client = remote(timeout.get())?;
            let query = query(false, no_wait, timeout);
            let resp: ApplyResponse = rt()?.block_on(
                client.delete(&format!("/v1/resources/{kind}/{namespace}/{name}{query}")),
            )?;
            print!("{}", render::apply(&resp));
            return Ok(confirmed(&resp));
        }
        Command::Token(TokenCommand::Create {
            namespace,
            service_account,
            ttl,
        }) => {
            let client = remote(std::time::Duration::ZERO)?;
            let req = TokenRequest {
                namespace,
                service_account,
                ttl_secs: ttl.get().as_secs(),
            };
            let created: TokenCreated = rt()?.block_on(client.post("/v1/tokens", &req))?;
            eprintln!(
                "join token {} for {} (expires in {})",
                created.info.id, created.info.identity, ttl
            );
            println!("{}", created.token);
        }
        Command::Token(TokenCommand::List { output }) => {
            let client = remote(std::time::Duration::ZERO)?;
            let tokens: Vec<TokenInfo> = rt()?.block_on(client.get("/v1/tokens"))?;
            match output {
                Output::Table => print!("{}", render::tokens(&tokens, now())),
                _ => println!("{}", serde_json::to_string_pretty(&tokens)?),
            }
        }
        Command::Token(TokenCommand::Revoke { id }) => {
            let client = remote(std::time::Duration::ZERO)?;
            let info: TokenInfo = rt()?.block_on(client.delete(&format!("/v1/tokens/{id}")))?;
            println!("join token {} for {} revoked", info.id, info.identity);
        }
        Command::Status { output } => {
            let client = remote(std::time::Duration::ZERO)?;
            let status: Status = rt()?.block_on(client.get("/v1/status"))?;
            match output {
                Output::Table => {
                    println!("config revision {}", status.revision);
                    print!("{}", render::status(&status.proxies, now()));
                }
                _ => println!("{}", serde_json::to_string_pretty(&status)?),
            }
        }
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
    Ok(ExitCode::SUCCESS)
}

/// Exit 3 when a change was made but not every affected proxy confirmed it.
fn confirmed(resp: &ApplyResponse) -> ExitCode {
    match &resp.rollout {
        Some(r) if !r.complete => ExitCode::from(3),
        _ => ExitCode::SUCCESS,
    }
}

fn query(dry_run: bool, no_wait: bool, timeout: Duration) -> String {
    let mut q = Vec::new();
    if dry_run {
        q.push("dryRun=true".to_string());
    }
    if !no_wait && !dry_run {
        q.push(format!("wait={}", timeout.get().as_millis()));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn parse_kind(kind: &str) -> anyhow::Result<Kind> {
    Kind::parse(kind).ok_or_else(|| {
        let valid: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        anyhow::anyhow!("unknown kind {kind:?}; valid kinds: {}", valid.join(", "))
    })
}

/// Files named on the command line: directories give their *.yaml / *.yml files, sorted; `-` is stdin.
fn collect_files(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .context("cannot read stdin")?;
            out.push(SourceFile {
                name: "-".into(),
                text,
            });
        } else if p.is_dir() {
            let found = weft_control::config_dir::read_all(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            if found.is_empty() {
                anyhow::bail!("{} holds no *.yaml or *.yml file", p.display());
            }
            out.extend(found);
        } else {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            out.push(SourceFile {
                name: p.display().to_string(),
                text,
            });
        }
    }
    Ok(out)
}

fn show_resources(
    kind: Kind,
    found: &[serde_json::Value],
    output: Output,
) -> anyhow::Result<String> {
    let resources = found
        .iter()
        .map(|v| Resource::from_json(v.clone()))
        .collect::<Result<Vec<_>, _>>()
        .context("the control plane sent a resource this weftctl cannot read")?;
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(found)?),
        Output::Yaml => resources
            .iter()
            .map(|r| r.to_yaml())
            .collect::<Vec<_>>()
            .join("---\n"),
        Output::Table => {
            if resources.is_empty() {
                return Ok(format!("no {kind} found\n"));
            }
            let rows: Vec<Vec<String>> = resources.iter().map(summary).collect();
            render::table(&["NAMESPACE", "NAME", "SUMMARY"], &rows)
        }
    })
}

fn summary(r: &Resource) -> Vec<String> {
    let m = r.metadata();
    let what = match r {
        Resource::Service(d) => {
            let ports: Vec<String> = d.spec.ports.iter().map(|p| p.port.to_string()).collect();
            let sel: Vec<String> = d
                .spec
                .selector
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!("ports {} selector {}", ports.join(","), sel.join(","))
        }
        Resource::Workload(d) => format!("address {}", d.spec.address),
        Resource::HttpRoute(d) => {
            let parents: Vec<&str> = d.spec.parent_refs.iter().map(|p| p.name.as_str()).collect();
            format!("for {} ({} rules)", parents.join(","), d.spec.rules.len())
        }
        Resource::AuthorizationPolicy(d) => {
            format!(
                "{:?} {:?} ({} rules)",
                d.spec.action,
                d.spec.mode,
                d.spec.rules.len()
            )
        }
        Resource::MeshConfig(d) => format!("mtls {:?}", d.spec.mtls_mode),
    };
    vec![m.namespace.clone(), m.name.clone(), what]
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
