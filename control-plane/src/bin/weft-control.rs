//! `weft-control`: the Weft control plane server.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use weft_api::Duration;
use weft_certs::TrustDomain;
use weft_control::backend::etcd::EtcdOptions;
use weft_control::server::{self, Options, StoreOptions};

/// jemalloc, as the proxy: what a registration storm allocated goes back to the system once freed
/// (glibc's per-thread arenas kept it), docs/performance.md "The control plane at 10,000 proxies".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its first allocation: two arenas for the two async workers and the
/// blocking pool; freed pages go back after a second, without a "muzzy" stage.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:2,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Weft control plane.
///
/// Issues workload certificates from the mesh CA, keeps the resources (Service, Workload, HTTPRoute,
/// AuthorizationPolicy, MeshConfig) and the registry of connected proxies, and pushes each proxy the
/// config it needs the moment anything changes.
///
/// On first start it creates, in the state directory: the mesh CA, the operator credential
/// (`operator.token`, for weftctl) and its own serving certificate; later starts reuse them. With
/// --store etcd://..., the first replica creates the mesh CA and the operator credential in etcd
/// instead (the CA key encrypted with --store-key-file) and every replica uses them.
///
/// Ports (defaults): 0.0.0.0:15010 proxy API (TLS: certificate signing, registration, config stream);
/// 127.0.0.1:15014 operator API (weftctl; bearer token) plus /metrics, /ready, /live.
///
/// Exit codes: 0 after SIGTERM/SIGINT and a clean shutdown; 1 on a runtime failure (e.g. a port in use);
/// 2 for a bad command line, a damaged state directory, an etcd store (--store) that does not answer,
/// or a store key file (--store-key-file) that is missing, open to others or does not decrypt the CA.
#[derive(Parser)]
#[command(name = "weft-control", version, about, long_about)]
struct Cli {
    /// Where the CA, tokens, applied resources and the registry live. With --store etcd://..., only
    /// the serving credential lives here, with copies of the CA certificate, the trust bundle and
    /// the operator token (for weftctl on this machine); the rest, the CA key included, is in etcd.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// Where resources, join tokens, revocations, claims, service addresses and the registry live:
    /// `dir` (the state directory, no service needed) or `etcd://HOST:2379[,HOST:2379...]` (etcd v3,
    /// shared by every replica; see docs/operations.md).
    #[arg(long, default_value = "dir", value_name = "dir|etcd://HOST:PORT[,...]", value_parser = store_choice)]
    store: StoreChoice,
    /// With --store etcd://...: the key that encrypts the mesh CA's key (and the operator token)
    /// in etcd, required. 32 raw bytes or 64 hex digits, mode 0600 or 0400, owned by the user
    /// weft-control runs as; every replica of the mesh is given the same file. Make one with
    /// `weft-control store-key --out FILE`. It is never written to etcd.
    #[arg(long, value_name = "FILE", env = "WEFT_STORE_KEY_FILE")]
    store_key_file: Option<PathBuf>,
    #[command(flatten)]
    etcd: EtcdFlags,
    /// Trust domain of a new mesh (default: a MeshConfig trustDomain in --config-dir, else cluster.local);
    /// must match an existing state directory.
    #[arg(long)]
    trust_domain: Option<TrustDomain>,
    /// A directory of resource YAML files, watched: changes apply within a second.
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Proxy API address (TLS).
    #[arg(long, default_value = "0.0.0.0:15010")]
    api_listen: SocketAddr,
    /// Operator API, metrics and health address (plain HTTP; keep it on loopback or a trusted network).
    #[arg(long, default_value = "127.0.0.1:15014")]
    operator_listen: SocketAddr,
    /// How long changes are gathered before a push.
    #[arg(long, default_value = "100ms")]
    debounce: Duration,
    /// How long a disconnected proxy's workload stays registered (MeshConfig proxyGracePeriod overrides).
    #[arg(long, default_value = "30s")]
    grace_period: Duration,
    /// Open the proxy API listener inside this network namespace (e.g. a pod network made by
    /// `weftctl network create`, whose gateway address --api-listen then names); the operator API stays
    /// in the namespace weft-control runs in.
    #[arg(long, value_name = "NAME")]
    api_netns: Option<String>,
    /// Also serve /metrics, /live and /ready (only those) on this address, inside --api-netns when that
    /// is given: for a Prometheus on the pod network, which must not reach the operator API.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// The proxy API address given to pod runners (`GET /v1/mesh`), when it differs from --api-listen.
    /// With control-plane replicas, give every replica's address (repeat the flag, or a comma list):
    /// `weftctl pod run` writes them all into the sidecar's `control.address`, and each sidecar
    /// spreads over them and fails over between them.
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    api_advertise: Vec<SocketAddr>,
    /// IPv4 range that services' virtual IPs are allocated from (stable per service, persisted).
    #[arg(long, default_value = "198.19.0.0/16")]
    vip_range: weft_control::vips::Ipv4Range,
    /// Lifetime of the control plane's own serving certificate (port 15010); it is renewed at two
    /// thirds of it while running, without dropping connections. Short values are for tests.
    #[arg(long, default_value = "90d", value_parser = serving_ttl)]
    serving_certificate_ttl: Duration,
    /// Proxy API connections at once, from all clients (lowered to fit the open-file limit).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    api_max_connections: u32,
    /// Proxy API connections at once from one client address; more are closed at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    api_max_connections_per_client: u32,
    /// A proxy API client must finish its TLS handshake within this, or its connection is closed.
    #[arg(long, default_value = "5s")]
    api_handshake_timeout: Duration,
    /// A proxy API connection with no open stream for this long is closed with GOAWAY (a proxy's
    /// config stream keeps its connection open).
    #[arg(long, default_value = "5m")]
    api_idle_timeout: Duration,
    /// Operator API and metrics listener connections at once (each); more are closed at accept.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    operator_max_connections: u32,
    /// An operator API or metrics listener request head (the first or the next on a kept-alive
    /// connection) must arrive whole within this, or the connection is closed.
    #[arg(long, default_value = "10s")]
    operator_header_timeout: Duration,
    /// The longest a join token may be created for (`weftctl token create --ttl`); longer is refused.
    #[arg(long, default_value = "24h")]
    max_token_ttl: Duration,
    /// An operator API request's body must arrive whole within this (a slow sender gets 408 and its
    /// connection back); the request head has 10 s.
    #[arg(long, default_value = "30s")]
    operator_body_timeout: Duration,
    /// This replica's id: the leader's id in `GET /v1/mesh` and in other replicas' logs (default
    /// HOSTNAME/PID).
    #[arg(long, value_name = "ID")]
    replica_id: Option<String>,
    /// With --store etcd://...: a leader that is killed is replaced within this (its etcd lease is
    /// a second shorter, renewed every third of it); one stopped with SIGTERM at once. The state
    /// directory's control plane always leads. 3s to 1h.
    #[arg(long, default_value = "10s", value_parser = lease_ttl)]
    leader_lease_ttl: Duration,
    /// How often the leader deletes expired join tokens and prunes expired claims and
    /// issued-certificate records from the store.
    #[arg(long, default_value = "60s", value_parser = positive)]
    sweep_interval: Duration,
    /// How long an expired join token is kept (listed, and refused as expired rather than unknown)
    /// before the leader's sweep deletes it.
    #[arg(long, default_value = "1h")]
    expired_token_retention: Duration,
    /// Log format on stderr (levels from WEFT_LOG, default info).
    #[arg(long, value_enum, default_value = "text", env = "WEFT_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

/// How to reach etcd (the names are etcdctl's with `etcd-` in front).
#[derive(clap::Args, Clone)]
struct EtcdFlags {
    /// CA bundle of the etcd members' certificates: connect to etcd with TLS.
    #[arg(long, value_name = "FILE")]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-key).
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Client key for etcd (with --etcd-cert).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// etcd user to authenticate as (password from --etcd-password-file).
    #[arg(long, value_name = "NAME")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (one line).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
    /// Prefix of every key Weft keeps in etcd (replicas of one mesh share it).
    #[arg(long, default_value = "/weft/", value_name = "PREFIX")]
    etcd_prefix: String,
}

impl EtcdFlags {
    fn options(&self, endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
            prefix: self.etcd_prefix.clone(),
        }
    }
}

#[derive(clap::Subcommand)]
enum Command {
    /// `--out FILE` writes a new random key for --store-key-file to FILE (64 hex digits, mode 0600;
    /// an existing file is never replaced) and exits. Copy it to every replica of the mesh, and keep
    /// it apart from etcd's backups. `rotate` re-seals what is stored under a new key.
    #[command(args_conflicts_with_subcommands = true)]
    StoreKey {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(subcommand)]
        action: Option<StoreKeyAction>,
    },
    /// Moves a mesh kept in a state directory into etcd, without reissuing any identity: resources
    /// with their revision, join tokens with their use counts, issued certificates, revocations,
    /// claims, service addresses and the registry, then the mesh CA (its key sealed with
    /// --store-key-file) and the operator token. Stop the control plane on the state directory
    /// first (it is refused while one runs); the target prefix must be empty. Then start the
    /// replicas with --store on the same etcd, --etcd-prefix and --store-key-file. Exit codes: 0
    /// done, 1 refused or failed (the reason names the file or the etcd key).
    Migrate {
        /// The state directory to move (the control plane's --state-dir).
        #[arg(long, value_name = "DIR")]
        from_state_dir: PathBuf,
        /// Where to: etcd://HOST:2379[,HOST:2379...], with the --etcd-* flags below.
        #[arg(long, value_name = "etcd://HOST:PORT[,...]", value_parser = etcd_url)]
        to: EtcdUrl,
        /// The key that seals the CA key in etcd (as --store-key-file of the replicas).
        #[arg(long, value_name = "FILE", env = "WEFT_STORE_KEY_FILE")]
        store_key_file: PathBuf,
        #[command(flatten)]
        etcd: EtcdFlags,
    },
}

#[derive(clap::Subcommand)]
enum StoreKeyAction {
    /// Re-seals the mesh CA's key and the operator token stored in etcd under a new store key, in
    /// one compare-and-swap transaction (the CA itself is unchanged: no certificate is reissued).
    /// Then give every replica the new file and restart them one at a time; a replica started with
    /// the old key is refused, naming the file. Make the new key with `weft-control store-key --out
    /// FILE`. Exit codes: 0 done, 1 refused or failed (the reason names the file or the etcd key).
    Rotate {
        /// The key the CA key is sealed under now (the replicas' current --store-key-file).
        #[arg(long, value_name = "FILE")]
        old: PathBuf,
        /// The key to seal it under from now on.
        #[arg(long, value_name = "FILE")]
        new: PathBuf,
        /// The mesh's etcd: etcd://HOST:2379[,HOST:2379...], with the --etcd-* flags below.
        #[arg(long, value_name = "etcd://HOST:PORT[,...]", value_parser = etcd_url)]
        store: EtcdUrl,
        #[command(flatten)]
        etcd: EtcdFlags,
    },
}

/// `weft-control store-key --out FILE` or `weft-control store-key rotate ...`.
fn store_key(out: Option<&PathBuf>, action: Option<&StoreKeyAction>) -> ExitCode {
    let result = match (out, action) {
        (Some(out), _) => weft_control::store_key::generate(out)
            .map(|()| format!("wrote a new store key to {}", out.display()))
            .map_err(anyhow::Error::from),
        (
            None,
            Some(StoreKeyAction::Rotate {
                old,
                new,
                store,
                etcd,
            }),
        ) => rotate(old, new, &etcd.options(store.0.clone())),
        (None, None) => Err(anyhow::anyhow!(
            "store-key needs --out FILE (a new key) or `rotate` (see --help)"
        )),
    };
    match result {
        Ok(done) => {
            println!("{done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn rotate(
    old: &std::path::Path,
    new: &std::path::Path,
    etcd: &EtcdOptions,
) -> anyhow::Result<String> {
    use weft_control::store_key::StoreKey;
    let (old_key, new_key) = (StoreKey::read(old)?, StoreKey::read(new)?);
    let backend = weft_control::backend::etcd::EtcdBackend::connect(etcd)?;
    weft_control::shared_ca::rotate(&backend, &old_key, &new_key)?;
    Ok(format!(
        "the mesh CA key and the operator token in {} are now sealed with {}; give every replica that file (--store-key-file) and restart them one at a time",
        weft_control::backend::Backend::describe(&backend),
        new.display()
    ))
}

/// The members an `etcd://` URL names.
#[derive(Clone)]
struct EtcdUrl(Vec<String>);

fn etcd_url(s: &str) -> Result<EtcdUrl, String> {
    weft_control::backend::etcd::parse_url(s)
        .map(EtcdUrl)
        .ok_or_else(|| format!("{s:?} is not etcd://HOST:PORT[,HOST:PORT...]"))
}

/// `weft-control migrate`.
fn migrate(from: &std::path::Path, to: EtcdOptions, key: &std::path::Path) -> ExitCode {
    match weft_control::migrate::migrate(from, &to, key) {
        Ok(s) => {
            let counts: Vec<String> = s.records.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            println!(
                "migrated {} to {} ({}); mesh CA fingerprint={}, its key sealed with {}",
                from.display(),
                s.store,
                counts.join(", "),
                s.ca_fingerprint,
                key.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// 3s (renewal at two thirds leaves a second) to 365d.
fn serving_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    let (min, max) = (
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(365 * 86_400),
    );
    if !(min..=max).contains(&d.get()) {
        return Err(format!("{s} is outside 3s..365d"));
    }
    Ok(d)
}

/// 3s to 1h: etcd keeps a lease for whole seconds (at least 2), a second shorter than this.
fn lease_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    let (min, max) = (
        std::time::Duration::from_secs(3),
        std::time::Duration::from_secs(3600),
    );
    if !(min..=max).contains(&d.get()) {
        return Err(format!("{s} is outside 3s..1h"));
    }
    Ok(d)
}

/// More than zero.
fn positive(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.get().is_zero() {
        return Err(format!("{s} must be more than 0"));
    }
    Ok(d)
}

#[derive(Clone)]
enum StoreChoice {
    Dir,
    Etcd(Vec<String>),
}

fn store_choice(s: &str) -> Result<StoreChoice, String> {
    if s == "dir" {
        return Ok(StoreChoice::Dir);
    }
    weft_control::backend::etcd::parse_url(s)
        .map(StoreChoice::Etcd)
        .ok_or_else(|| format!("{s:?} is neither `dir` nor etcd://HOST:PORT[,HOST:PORT...]"))
}

/// The store the flags name.
fn store_options(cli: &Cli) -> StoreOptions {
    match &cli.store {
        StoreChoice::Dir => StoreOptions::Dir,
        StoreChoice::Etcd(endpoints) => StoreOptions::Etcd(cli.etcd.options(endpoints.clone())),
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::StoreKey { out, action }) = &cli.command {
        return store_key(out.as_ref(), action.as_ref());
    }
    if let Some(Command::Migrate {
        from_state_dir,
        to,
        store_key_file,
        etcd,
    }) = &cli.command
    {
        return migrate(from_state_dir, etcd.options(to.0.clone()), store_key_file);
    }
    init_logging(cli.log_format);
    let opts = options(cli);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    rt.block_on(run(opts))
}

/// The server's options from the flags.
fn options(cli: Cli) -> Options {
    Options {
        store: store_options(&cli),
        store_key_file: cli.store_key_file.clone(),
        vip_range: cli.vip_range,
        api_netns: cli.api_netns,
        api_advertise: cli.api_advertise,
        metrics_listen: cli.metrics_listen,
        state_dir: cli.state_dir,
        trust_domain: cli.trust_domain,
        config_dir: cli.config_dir,
        api_listen: cli.api_listen,
        operator_listen: cli.operator_listen,
        debounce: cli.debounce.get(),
        grace_period: cli.grace_period.get(),
        serving_ttl: cli.serving_certificate_ttl.get(),
        api_limits: weft_control::proxy_api::Limits {
            max_connections: cli.api_max_connections as usize,
            max_per_client: cli.api_max_connections_per_client as usize,
            idle_timeout: cli.api_idle_timeout.get(),
            handshake_timeout: cli.api_handshake_timeout.get(),
            ..Default::default()
        },
        max_token_ttl: cli.max_token_ttl.get(),
        operator_body_timeout: cli.operator_body_timeout.get(),
        operator_limits: weft_control::operator_api::Limits {
            max_connections: cli.operator_max_connections as usize,
            header_timeout: cli.operator_header_timeout.get(),
        },
        leader: weft_control::leader::Settings {
            replica_id: cli
                .replica_id
                .clone()
                .unwrap_or_else(weft_control::leader::default_replica_id),
            lease_ttl: cli.leader_lease_ttl.get(),
            sweep_interval: cli.sweep_interval.get(),
            token_retention: cli.expired_token_retention.get(),
        },
    }
}

async fn run(opts: Options) -> ExitCode {
    let bound = match server::bind(&opts).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e:#}");
            let is_bind = e.to_string().starts_with("cannot listen");
            return ExitCode::from(if is_bind { 1 } else { 2 });
        }
    };
    let stop = bound.cp.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        stop.cancel();
    });
    bound.serve().await;
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().flatten_event(true).init(),
    }
}
