//! The `weft-proxy` binary: CLI, logging, signals and exit codes around the library.

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_proxy::config::ProxyConfig;
use weft_proxy::control::{bootstrap, Settings};

/// jemalloc: fewer instructions per request than glibc's malloc (docs/performance.md, "The allocator").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's own settings, read at its first allocation (the `_rjem_` prefix is tikv-jemalloc-sys's).
/// One arena: the proxy runs at most a few threads, and an arena per thread holds memory a sidecar should
/// give back. Freed pages go back to the kernel after a second (not ten), without a "muzzy" stage, so
/// the memory after a burst falls back close to glibc's.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Weft sidecar proxy.
///
/// Carries an app's traffic to peer proxies over mutual TLS (SPIFFE identities) and HTTP/2, and delivers
/// traffic from peers to the local app.
///
/// Ports (defaults): tunnel 0.0.0.0:15008 (mTLS + HTTP/2 from peers), admin 127.0.0.1:15000 (/config,
/// /identity; POST /shutdown with `admin.shutdown`), health 0.0.0.0:15020 (/ready, /live, /metrics); with a `dns:` section,
/// DNS 127.0.0.1:15053 (UDP and TCP: mesh service names to their VIPs).
///
/// Exit codes: 0 after a clean drain (SIGTERM, SIGINT or, when enabled, POST /shutdown); 1 when the drain deadline passed
/// with work left, or on a runtime failure such as a port already in use; 2 for a bad command line,
/// config file or identity file.
#[derive(Parser)]
#[command(name = "weft-proxy", version, about, long_about)]
struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "WEFT_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with the given config file until SIGTERM/SIGINT, then drain and exit.
    ///
    /// Log levels come from WEFT_LOG (e.g. `info`, `weft_proxy=debug`); default `info`.
    Run {
        /// YAML config file: identity files, tunnel/admin/health addresses, outbound listeners, limits.
        /// See docs/proxy-config.md.
        #[arg(long, short)]
        config: PathBuf,
        /// Threads that carry traffic. Default: the CPUs this process may run on, at most 2 (a sidecar
        /// shares its pod's CPU with the app). With 1, the proxy runs a single-threaded scheduler.
        #[arg(long, env = "WEFT_WORKER_THREADS")]
        worker_threads: Option<usize>,
    },
    /// Validate a config file and its identity files, print a summary, and exit (0 = valid, 2 = not).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Install the iptables (IPv4) rules that send a pod's traffic through its sidecar, in the network
    /// namespace this runs in (e.g. `ip netns exec POD weft-proxy init`), and turn IPv6 off there.
    ///
    /// The app's outgoing TCP goes to --outbound-port, incoming TCP to --inbound-port, the app's DNS
    /// (port 53) to --dns-port. Never redirected: sockets with the proxy's --mark (and --proxy-uid's),
    /// loopback, port 15020 of --mesh-cidrs, excluded ports and ranges; inbound, the proxy's ports
    /// 15008/15020/15000. Anything else but TCP, ICMP and DNS is refused on the way out (filter
    /// table: UDP, UDP-Lite, ...) and dropped on the way in, except replies and excluded inbound ports. Rules live in chains WEFT_OUTPUT and
    /// WEFT_INBOUND (nat) and WEFT_FILTER_OUT and WEFT_FILTER_IN (filter); running init again replaces
    /// them (idempotent); --cleanup removes them and turns IPv6 back on.
    ///
    /// Exit codes: 0 done; 2 bad flags; 3 iptables not installed; 4 not permitted (needs root /
    /// CAP_NET_ADMIN); 1 another failure (iptables' message is printed).
    Init(InitArgs),
}

#[derive(clap::Args)]
struct InitArgs {
    /// Where the proxy's intercepted-outbound listener is (`interception.outbound`).
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Where the proxy's intercepted-inbound listener is (`interception.inbound`).
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// SO_MARK the proxy sets on its own sockets (`interception.mark`); never redirected.
    #[arg(long, default_value_t = weft_proxy::config::DEFAULT_MARK)]
    mark: u32,
    /// Also exempt every socket of this user: a proxy run as its own user without CAP_NET_ADMIN cannot
    /// set its mark, so this is how its traffic is recognised.
    #[arg(long)]
    proxy_uid: Option<u32>,
    /// The mesh's pod ranges, e.g. `198.18.0.0/16`: the app reaches port 15020 (health, metrics) of
    /// these addresses directly; anywhere else, 15020 is redirected like any port.
    #[arg(long, value_delimiter = ',')]
    mesh_cidrs: Vec<weft_proxy::intercept::Cidr>,
    /// The proxy's DNS responder port; the app's port-53 traffic (UDP and TCP) goes there.
    #[arg(long, default_value_t = 15053, conflicts_with = "no_dns")]
    dns_port: u16,
    /// Leave the app's DNS alone.
    #[arg(long)]
    no_dns: bool,
    /// Destination ports the app reaches directly, e.g. `5432,6379`.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<u16>,
    /// Ports that reach the app directly from outside, e.g. `22`.
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<u16>,
    /// Destination ranges the app reaches directly, e.g. `10.0.0.0/8,192.168.1.5`.
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_cidrs: Vec<weft_proxy::intercept::Cidr>,
    /// Print the rules and the commands that would install them; change nothing.
    #[arg(long, conflicts_with = "cleanup")]
    dry_run: bool,
    /// Remove the rules and chains (fine when none are installed).
    #[arg(long)]
    cleanup: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    raise_nofile_limit();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Init(args) => init(args),
        Command::Run {
            config,
            worker_threads,
        } => run(&config, worker_threads),
    }
}

fn init(a: InitArgs) -> ExitCode {
    use weft_proxy::intercept::{self, Action, Settings};
    let zero = [
        ("--outbound-port", a.outbound_port),
        ("--inbound-port", a.inbound_port),
        ("--dns-port", a.dns_port),
    ];
    if let Some((flag, _)) = zero.iter().find(|(_, p)| *p == 0) {
        eprintln!("error: {flag} must be 1-65535");
        return ExitCode::from(2);
    }
    if a.mark == 0 {
        eprintln!("error: --mark must be non-zero (0 is every unmarked socket)");
        return ExitCode::from(2);
    }
    let settings = Settings {
        outbound_port: a.outbound_port,
        inbound_port: a.inbound_port,
        mark: a.mark,
        proxy_uid: a.proxy_uid,
        dns_port: (!a.no_dns).then_some(a.dns_port),
        exclude_outbound_ports: a.exclude_outbound_ports,
        exclude_inbound_ports: a.exclude_inbound_ports,
        exclude_outbound_cidrs: a.exclude_outbound_cidrs,
        mesh_cidrs: a.mesh_cidrs,
    };
    let action = match (a.dry_run, a.cleanup) {
        (true, _) => Action::DryRun,
        (_, true) => Action::Cleanup,
        _ => Action::Install,
    };
    match intercept::run(action, &settings) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Raises the soft open-file limit to the hard limit. Every connection is a descriptor, and the usual
/// soft default (1024) would let a flood of idle connections exhaust them long before the listeners'
/// connection caps apply. Failure only warns: the process still runs, with the limit it had.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit raised to its hard limit"),
        Err(error) => tracing::warn!(%error, "cannot raise RLIMIT_NOFILE"),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal; log files and collectors get plain text.
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

/// A start-up failure and the exit code it maps to: 2 for configuration and credentials (nothing will
/// change by retrying), 1 for the rest.
struct Failure(u8, anyhow::Error);

fn config_problem(e: impl Into<anyhow::Error>) -> Failure {
    Failure(2, e.into())
}

fn check(path: &std::path::Path) -> ExitCode {
    let summary = || -> anyhow::Result<String> {
        let cfg = ProxyConfig::load(path)?;
        let who = match (&cfg.control, &cfg.workload) {
            (Some(c), Some(w)) => format!(
                "identity ns/{}/sa/{} from the control plane at {}",
                w.namespace, w.service_account, c.address
            ),
            _ => {
                let id =
                    weft_proxy::load_identity(&cfg).context("cannot load the proxy's identity")?;
                format!("identity {}", id.id())
            }
        };
        Ok(format!(
            "{}: ok; {who}; tunnel {}; {} outbound listener(s)",
            path.display(),
            cfg.tunnel.listen,
            cfg.outbound.0.len()
        ))
    };
    match summary() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(path: &std::path::Path, worker_threads: Option<usize>) -> ExitCode {
    let cfg = match ProxyConfig::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime(worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(start(cfg)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(Failure(code, e)) => {
            tracing::error!("{e:#}");
            ExitCode::from(code)
        }
    }
}

/// How long a first start waits for an unreachable control plane before giving up.
const JOIN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

async fn start(cfg: ProxyConfig) -> Result<bool, Failure> {
    if let Some(i) = &cfg.interception {
        // Before the first connection to the control plane: in a pod, unmarked sockets are redirected.
        weft_proxy::socket::set_mark(i.mark);
    }
    let settings = Settings::load(&cfg, JOIN_PATIENCE).await.map_err(|e| {
        let code = if e
            .downcast_ref::<weft_proxy::control::conn::ConnError>()
            .is_some()
        {
            1
        } else {
            2
        };
        Failure(code, e)
    })?;
    let Some(settings) = settings else {
        let identity = weft_proxy::load_identity(&cfg)
            .context("cannot load the proxy's identity")
            .map_err(config_problem)?;
        return serve(cfg, identity, None).await.map_err(|e| Failure(1, e));
    };
    let (identity, _) = bootstrap::identity(&settings, JOIN_PATIENCE)
        .await
        .map_err(|e| {
            let refused = e
                .downcast_ref::<bootstrap::BootstrapError>()
                .is_some_and(|b| matches!(b, bootstrap::BootstrapError::Refused { .. }));
            let code = if refused || e.downcast_ref::<weft_certs::CertError>().is_some() {
                2
            } else {
                1
            };
            Failure(code, e.context("cannot obtain the proxy's identity"))
        })?;
    serve(cfg, identity, Some(settings))
        .await
        .map_err(|e| Failure(1, e))
}

async fn serve(
    cfg: ProxyConfig,
    identity: weft_certs::Identity,
    control: Option<Settings>,
) -> anyhow::Result<bool> {
    let running = weft_proxy::bind(cfg, identity).await?;
    if let Some(settings) = control {
        weft_proxy::control::start(&running.proxy, settings);
    }
    let shutdown = running.proxy.shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received; draining");
        shutdown.cancel();
    });
    Ok(running.serve().await)
}

/// One worker: the current-thread scheduler (no cross-thread wake-ups or work stealing, measurably less
/// CPU per request). More: the multi-threaded one.
fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = worker_threads.unwrap_or(cpus.min(2)).max(1);
    tracing::debug!(threads, "starting runtime");
    if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; only POST /shutdown stops the proxy");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
