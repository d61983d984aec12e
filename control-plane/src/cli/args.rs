//! weftctl's command line (clap derive). Values are checked here, so a bad kind, name, URL or duration is
//! a usage error (exit 2) before anything is sent.

use super::client::{ServerUrl, TokenOrigin};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::path::PathBuf;
use weft_api::resources::{dns_label, Kind};
use weft_api::Duration;
use weft_certs::{SpiffeId, TrustDomain};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:15014";
pub const DEFAULT_TOKEN_FILE: &str = "/var/lib/weft/operator.token";
/// The control plane waits at most this long for a rollout; asking for more would be cut short silently.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

const ABOUT_LONG: &str = "\
Weft operator CLI.

Talks to weft-control's operator API (--server) with the operator token the control plane writes to
<state-dir>/operator.token (--token-file): apply, get and delete resources, create and revoke join
tokens, see every proxy's status. `pod` and `network` run apps in local pods (network namespaces with a
sidecar; root needed) and join them to the mesh. `ca` and `cert` work offline on a CA directory, for
proxies run in explicit mode with certificate files.";

const EXAMPLES: &str = "\
Examples:
  weftctl apply -f examples/resources/       # every *.yaml / *.yml in the directory
  weftctl apply -f route.yaml --dry-run      # validate and show the diff; change nothing
  weftctl get services -A
  weftctl token create --namespace default --service-account reviews --ttl 1h
  weftctl status
  weftctl shift reviews --to v2 --step 10 --interval 30s --max-error-rate 1% --max-p99 250ms

Exit codes:
  0  done (and, when waiting, every affected proxy acknowledged the change)
  1  refused or failed: bad input, an error from the control plane, the control plane unreachable
  2  bad usage (unknown command, flag, kind or value)
  3  applied, but not confirmed by every affected proxy (a NACK, a disconnect or the timeout)
  4  shift --to: a threshold was crossed (rolled back)
  5  shift --to: too few requests to judge a step (rolled back)
  6  why: the request would be refused (denied, a bad path, or no ready endpoint)
  130  shift --to: interrupted by Ctrl-C or SIGTERM (rolled back)";

#[derive(Debug, Parser)]
#[command(name = "weftctl", version, about = "Weft operator CLI", long_about = ABOUT_LONG, after_long_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub remote: RemoteArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the control plane is and how to prove we are its operator.
#[derive(Debug, Clone, Args)]
pub struct RemoteArgs {
    /// The control plane's operator API (plain HTTP), e.g. http://10.0.0.5:15014.
    #[arg(long, global = true, env = "WEFT_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: ServerUrl,
    /// The operator token; weft-control writes it to <state-dir>/operator.token (mode 0600).
    #[arg(long, global = true, env = "WEFT_TOKEN_FILE", default_value = DEFAULT_TOKEN_FILE, value_name = "PATH")]
    pub token_file: PathBuf,
    /// Where `token_file` came from, for error messages.
    #[arg(skip)]
    pub token_origin: TokenOrigin,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Remote(RemoteCommand),
    /// Manage an offline mesh certificate authority kept in a directory.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Issue workload certificates from an offline CA directory.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Run apps in local pods (network namespaces with a sidecar); list and delete them.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Pod networks: a bridge in a network namespace of its own, which pods attach to, or several
    /// simulated nodes (--nodes) routed to each other; partition and heal a node.
    #[command(subcommand)]
    Network(NetworkCommand),
}

#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Run CMD in a new pod: namespace, address, interception, a sidecar that joins the mesh, and the app
    /// once the sidecar is ready. Stays in the foreground until the app exits (or SIGTERM/SIGINT, passed
    /// to the app), then drains the sidecar and removes the pod. Exits with the app's exit code, or 69 when
    /// its sidecar died and could not be restarted.
    #[command(after_long_help = POD_RUN_EXAMPLES)]
    Run(Box<PodRunArgs>),
    /// The pods on this machine.
    #[command(
        after_long_help = "Examples:\n  weftctl pod list\n  weftctl pod list --network demo"
    )]
    List {
        #[arg(long)]
        network: Option<String>,
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Stop a pod (its app gets SIGTERM, the sidecar drains) and remove it; cleans up after a runner
    /// that is gone.
    #[command(
        after_long_help = "Examples:\n  weftctl pod delete reviews-v2\n  weftctl pod delete client --network demo"
    )]
    Delete {
        name: String,
        #[arg(long)]
        network: Option<String>,
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
}

const POD_RUN_EXAMPLES: &str = "\
Examples:
  weftctl pod run --network demo --name reviews-v2 --service reviews --label version=v2 --port 9080 \\
      -- ./shop reviews --version v2
  weftctl pod run --network demo --name client -- sleep infinity
  weftctl pod run --network lab --node node2 --name client -- sleep infinity   # a network with --nodes

Inside the pod: the app's outgoing TCP goes through the sidecar (mTLS to mesh services and pods), mesh
service names resolve (reviews, reviews.default, reviews.default.svc) through the sidecar's DNS responder, and
incoming plaintext is refused unless --mtls-mode PERMISSIVE (or the mesh's MeshConfig) allows it. UDP
other than DNS (and any protocol but TCP and ICMP) is refused and IPv6 is off.

The app runs as a uid of its own (allocated from 200000-265535, unique among the live pods on the host,
shown by `weftctl pod list`) unless --user is given, the sidecar as --proxy-user (default
1337:1337, shared by every pod's sidecar), both with no capabilities: the app cannot change the pod's
rules, mark sockets, signal its sidecar or another pod's app, or read the pod's directory (0700, the
sidecar's). Pods given the same --user are not isolated from each other. If the sidecar dies, it is
restarted (at most 3 times a minute); if it cannot be, the app gets SIGTERM and weftctl exits with 69.";

#[derive(Debug, Clone, Args)]
pub struct PodRunArgs {
    /// The pod network (created if absent, as one bridge; a network of several nodes is made by
    /// `network create --nodes`).
    #[arg(long, default_value = "default")]
    pub network: String,
    /// The network's range when this creates it (default 198.18.0.0/16; gateway = first address).
    #[arg(long)]
    pub cidr: Option<crate::pod::network::PodCidr>,
    /// The node to run the pod on, in a network created with --nodes (which then requires it): the
    /// pod's address comes from that node's range and its gateway is that node's bridge.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Pod name (unique in the network).
    #[arg(long)]
    pub name: String,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Service account (identity ns/NAMESPACE/sa/SA); default: --service, else the pod name. A Service
    /// takes the pod as an endpoint only if it lists this account (`serviceAccounts`, default its name).
    #[arg(long)]
    pub service_account: Option<String>,
    /// Adds the label app=SERVICE (what a Service's selector matches).
    #[arg(long)]
    pub service: Option<String>,
    /// A label KEY=VALUE (repeatable), e.g. version=v2.
    #[arg(long = "label", value_parser = label)]
    pub labels: Vec<(String, String)>,
    /// An app port (repeatable); the first is probed for readiness.
    #[arg(long = "port")]
    pub ports: Vec<u16>,
    /// STRICT or PERMISSIVE: this workload's inbound plaintext policy (default: the mesh's MeshConfig).
    #[arg(long, value_parser = ["STRICT", "PERMISSIVE"])]
    pub mtls_mode: Option<String>,
    /// Probe readiness with GET on this path (default: a TCP connect to the first --port).
    #[arg(long)]
    pub readiness_http: Option<String>,
    /// Fraction (0-1) of successful requests the sidecar writes to the pod's access.log (failures
    /// always); 0 turns the access log off.
    #[arg(long, default_value_t = 1.0, value_parser = fraction)]
    pub access_log_sample: f64,
    /// Send the sidecar's spans to this collector URL (e.g. http://198.18.0.1:9411/api/v2/spans for
    /// Zipkin, http://198.18.0.1:4318/v1/traces for OTLP).
    #[arg(long, value_name = "URL")]
    pub trace_collector: Option<String>,
    /// How spans are encoded for --trace-collector.
    #[arg(
        long,
        value_enum,
        default_value = "zipkin",
        requires = "trace_collector"
    )]
    pub trace_format: TraceFormat,
    /// A sidecar limit KEY=VALUE (repeatable), written to its config's `limits:` section, e.g.
    /// header_read_timeout=5s or max_connections=2000 (docs/proxy-config.md "Limits" names every key
    /// and its default; the sidecar refuses an unknown key or a bad value and the pod does not start).
    #[arg(long = "proxy-limit", value_name = "KEY=VALUE", value_parser = proxy_limit)]
    pub proxy_limits: Vec<(String, String)>,
    /// The weft-proxy binary (default: beside weftctl, else on PATH); it must be executable by
    /// --proxy-user.
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// The app's user UID[:GID] (the group defaults to the uid); default: a uid (and gid) of its own
    /// from 200000-265535 (which --user may not name); whatever still runs as it is killed when the pod
    /// stops. Pods given the same user can signal, trace and read each other's apps. The
    /// app runs with no capabilities and no supplementary groups; root (0) is refused, and so is the
    /// sidecar's uid. The command must be executable by this user.
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<crate::pod::sandbox::RunAs>,
    /// The sidecar's user UID[:GID]: it owns the pod's directory (0700) and interception exempts its
    /// sockets. Root (0) is refused, and so are the apps' uids (200000-265535).
    #[arg(long, value_name = "UID[:GID]", default_value_t = default_proxy_user())]
    pub proxy_user: crate::pod::sandbox::RunAs,
    /// The app's command and arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

fn default_proxy_user() -> crate::pod::sandbox::RunAs {
    let id = crate::pod::sandbox::DEFAULT_PROXY_UID;
    crate::pod::sandbox::RunAs { uid: id, gid: id }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("`{s}` is not a fraction between 0 and 1")),
    }
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a pod network (idempotent): one bridge for every pod, or with --nodes several simulated
    /// nodes, each a namespace with a pod bridge of its own, routed to each other over an underlay.
    #[command(after_long_help = NETWORK_CREATE_EXAMPLES)]
    Create {
        name: String,
        #[arg(long, default_value = crate::pod::runner::DEFAULT_CIDR)]
        cidr: crate::pod::network::PodCidr,
        /// Simulate N nodes (1-64): the range's first /24 is the underlay, node I (named nodeI, namespace
        /// weft-NAME.nodeI) gets the I-th /24 after it. Pods then need `pod run --node`.
        #[arg(long, value_name = "N")]
        nodes: Option<u32>,
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Delete a pod network (refused while it has pods, unless --force).
    #[command(
        after_long_help = "Examples:\n  weftctl network delete demo\n  weftctl network delete demo --force   # deletes its pods first"
    )]
    Delete {
        name: String,
        #[arg(long)]
        force: bool,
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// The pod networks on this machine, then the nodes (ranges, addresses, pods) of those that have
    /// several.
    #[command(after_long_help = "Examples:\n  weftctl network list")]
    List {
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Cut a node off the other nodes (its port on the underlay goes down) to rehearse a fault; its
    /// pods keep running and reach only each other. `heal` joins it again.
    #[command(
        after_long_help = "Examples:\n  weftctl network partition lab --node node3\n  weftctl network heal lab --node node3"
    )]
    Partition {
        name: String,
        #[arg(long, value_name = "NODE")]
        node: String,
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Join a partitioned node to the other nodes again.
    #[command(after_long_help = "Examples:\n  weftctl network heal lab --node node3")]
    Heal {
        name: String,
        #[arg(long, value_name = "NODE")]
        node: String,
        #[arg(long, env = "WEFT_RUN_DIR", default_value = crate::pod::DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
}

const NETWORK_CREATE_EXAMPLES: &str = "\
Examples:
  weftctl network create demo
  weftctl network create lab --cidr 198.18.0.0/20
  weftctl network create lab --nodes 3

Then run the control plane's proxy API in it:
  weft-control --api-netns weft-demo --api-listen 198.18.0.1:15010
or, with nodes, on one of them (every node and pod routes to every node's address):
  weft-control --api-netns weft-lab.node1 --api-listen 198.18.1.1:15010";

fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// A `limits:` key and value: a field name and a plain scalar (a number, a duration), nothing that
/// could add YAML of its own.
fn proxy_limit(s: &str) -> Result<(String, String), String> {
    let (k, v) = label(s)?;
    let key_ok = k
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let value_ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.');
    if !key_ok || !value_ok {
        return Err(format!(
            "expected KEY=VALUE with a field name of lowercase letters, digits and `_` and a value of \
             letters, digits and `.` (e.g. header_read_timeout=5s), got {s:?}"
        ));
    }
    Ok((k, v))
}

/// The commands that talk to the control plane.
#[derive(Debug, Subcommand)]
pub enum RemoteCommand {
    /// Create or update resources from YAML files, directories or stdin.
    #[command(long_about = APPLY_LONG, after_long_help = APPLY_EXAMPLES)]
    Apply(ApplyArgs),
    /// Show resources as a table, YAML or JSON.
    #[command(long_about = GET_LONG, after_long_help = GET_EXAMPLES)]
    Get(GetArgs),
    /// Delete one resource.
    #[command(long_about = DELETE_LONG, after_long_help = DELETE_EXAMPLES)]
    Delete(DeleteArgs),
    /// Create, list and revoke join tokens (how a proxy gets its first certificate).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Revoke a workload's or an identity's certificates: peers refuse them within one push.
    #[command(subcommand, long_about = super::revoke::REVOKE_LONG, after_long_help = super::revoke::REVOKE_EXAMPLES)]
    Revoke(super::revoke::RevokeCommand),
    /// Lift a revocation made with `weftctl revoke`.
    #[command(
        subcommand,
        after_long_help = "Examples:\n  weftctl unrevoke workload default/frontend-1\n  weftctl unrevoke identity --namespace shop --service-account cart"
    )]
    Unrevoke(super::revoke::UnrevokeCommand),
    /// Every proxy the control plane knows: identity, readiness, config versions, last NACK, certificate.
    #[command(long_about = STATUS_LONG, after_long_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
    /// Shift a service's traffic between its versions (subsets), or send requests with a header to one.
    #[command(long_about = SHIFT_LONG, after_long_help = SHIFT_EXAMPLES)]
    Shift(ShiftArgs),
    /// Put back the split a service had before its last shift.
    #[command(
        after_long_help = "Examples:\n  weftctl rollback reviews\n  weftctl rollback cart -n shop"
    )]
    Rollback(RollbackArgs),
    /// Request rate, success rate and latency per service and version, measured once over a window.
    #[command(long_about = STAT_LONG, after_long_help = STAT_EXAMPLES)]
    Stat(StatArgs),
    /// The same figures as `stat`, refreshed in the terminal until Ctrl-C.
    #[command(long_about = STAT_LONG, after_long_help = TOP_EXAMPLES)]
    Top(TopArgs),
    /// Explain how the mesh treats a request from one identity to a service: the route rule, the
    /// endpoints it can reach, and which authorization policy and rule allow or deny it at each.
    #[command(long_about = WHY_LONG, after_long_help = WHY_EXAMPLES)]
    Why(WhyArgs),
}

const WHY_LONG: &str = "\
Explain how the mesh treats a request from one identity to a service, from the control plane's view (its
resources and registered workloads), with the same route matching and authorization code the sidecars
run: which route rule takes the request and how it splits, which endpoints (workload, address, identity,
version) it can reach, and at each one, after the rule's header edits and path normalisation, which
AuthorizationPolicy and rule allow or deny it (audit-mode policies too).

Exit code 0 when every ready endpoint lets the request through; 6 when any refuses it (denied, or a path
answered 400) or no endpoint is ready.";

const WHY_EXAMPLES: &str = "\
Examples:
  weftctl why --from default/frontend --to reviews
  weftctl why --from default/frontend --to reviews --method DELETE --path /reviews/1
  weftctl why --from shop/web --to shop/cart --port 8080 -H 'x-user-group: beta'
  weftctl why --from default/backup --to db --tcp -o json";

#[derive(Debug, Args)]
pub struct WhyArgs {
    /// The caller: NAMESPACE/SERVICE_ACCOUNT, or a SPIFFE ID.
    #[arg(long, value_name = "NS/SA")]
    pub from: String,
    /// The service: NAME (in --namespace) or NAMESPACE/NAME.
    #[arg(long, value_name = "SERVICE")]
    pub to: String,
    /// Namespace of --to when it has none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// The service port (default: its first).
    #[arg(long)]
    pub port: Option<u16>,
    /// An opaque TCP connection rather than an HTTP request (implied by a `tcp` port).
    #[arg(long, conflicts_with_all = ["method", "path", "header"])]
    pub tcp: bool,
    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Path, with a query if any.
    #[arg(long, default_value = "/")]
    pub path: String,
    /// A request header, `NAME: VALUE` (or NAME=VALUE); repeatable.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub header: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: ListFormat,
}

const STAT_LONG: &str = "\
Request rate, success rate (non-5xx) and p50/p95/p99 latency per service and version (subset), as the
calling proxies measured them: the control plane holds each connected proxy's cumulative counts
(GET /v1/stats), and weftctl takes the difference over a window. Latency percentiles are the upper bounds
of the buckets they fall in (≤25ms means between the previous bound and 25 ms).";

const STAT_EXAMPLES: &str = "\
Examples:
  weftctl stat                       # every service of the default namespace, over 2s
  weftctl stat reviews --window 10s
  weftctl stat -n shop -o json";

const TOP_EXAMPLES: &str = "\
Examples:
  weftctl top                        # redrawn every 2s until Ctrl-C
  weftctl top reviews --interval 5s
  weftctl top --iterations 3 --no-clear   # for scripts and logs";

#[derive(Debug, Args)]
pub struct StatArgs {
    /// One service (default: every service of the namespace).
    pub service: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// How long to measure.
    #[arg(long, default_value = "2s")]
    pub window: weft_api::Duration,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: ListFormat,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// One service (default: every service of the namespace).
    pub service: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// How often to refresh (each refresh measures the time since the last).
    #[arg(long, default_value = "2s")]
    pub interval: weft_api::Duration,
    /// Stop after this many refreshes.
    #[arg(long)]
    pub iterations: Option<u32>,
    /// Print each refresh below the last instead of redrawing the screen.
    #[arg(long)]
    pub no_clear: bool,
}

const SHIFT_LONG: &str = "\
Shift a service's traffic between its versions (subsets: endpoints labelled version=<subset>).

The change is an edit of the service's HTTPRoute (named after the service; created when missing): the
weights go in its rule without matches; --header NAME=VALUE SUBSET adds (or updates) a first rule that
sends requests carrying that header to SUBSET. The weights replaced are kept in the route's annotation
weft.dev/previous-weights, which `weftctl rollback` restores. weftctl prints what changed and, unless
--no-wait, waits until every affected proxy has acknowledged it (naming those that have not).

Progressive delivery (--to SUBSET): weftctl moves the share of SUBSET up by --step percent at a time
(10, 20, ... 100 by default), the rest staying on the --from subsets (default: those weighted now), and
waits for every proxy to acknowledge each step. During each --interval it watches SUBSET's requests as
the calling proxies count them: the error rate (5xx answers / requests) and p99 latency, known as the
upper bound of the latency bucket holding it (bounds 1, 2, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5,
10 s). A step advances once its window holds at least --min-requests requests within --max-error-rate
and --max-p99; with fewer it keeps waiting, up to --max-idle-intervals intervals. When a threshold is
crossed, when traffic stays too thin, when a step is not acknowledged, or on Ctrl-C, weftctl puts back
the route's split from before it started (waiting for the acknowledgements) and exits non-zero. After
a promotion, `weftctl rollback` goes back to the split from before the shift.";

const SHIFT_EXAMPLES: &str = "\
Examples:
  weftctl shift reviews v1=90 v2=10                 # canary
  weftctl shift reviews v2=100                      # promote / blue-green switch
  weftctl shift reviews --header x-user-group=beta v2   # A/B by header
  weftctl rollback reviews                          # the previous weights
  weftctl shift reviews --to v2 --step 10 --interval 30s --max-error-rate 1% --max-p99 250ms
  weftctl shift reviews --to v2 --from v1 --step 25 --interval 1m --min-requests 100

Exit codes: 0 applied and acknowledged (with --to: promoted to 100%), 1 refused or failed, 2 bad
usage, 3 applied but not acknowledged by every affected proxy (with --to: rolled back). With --to,
also (each after rolling back): 4 a threshold was crossed, 5 too few requests to judge a step within
--max-idle-intervals, 130 interrupted (Ctrl-C or SIGTERM).";

#[derive(Debug, Args)]
pub struct ShiftArgs {
    pub service: String,
    /// SUBSET=WEIGHT for each version (relative weights), or with --header the one SUBSET.
    #[arg(required_unless_present = "to")]
    pub targets: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Route requests with this header (NAME=VALUE) to the single SUBSET given.
    #[arg(long, value_name = "NAME=VALUE")]
    pub header: Option<String>,
    #[command(flatten)]
    pub progressive: ProgressiveArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `weftctl shift SERVICE --to SUBSET ...`: progressive delivery. The flags are options, their defaults
/// applied by the accessors, so that [`parse`] can refuse any of them given without --to (clap's
/// `requires` lets them through when a conflicting argument, such as the weights, is present).
#[derive(Debug, Clone, Args)]
pub struct ProgressiveArgs {
    /// Move traffic to SUBSET step by step, watching its error rate and latency; roll back on trouble.
    #[arg(long, value_name = "SUBSET", conflicts_with_all = ["targets", "header", "no_wait"])]
    pub to: Option<String>,
    /// The subsets that keep the rest, in proportion to their weights now (repeatable or
    /// comma-separated) [default: the subsets weighted now, other than --to].
    #[arg(long, value_name = "SUBSET", value_delimiter = ',')]
    pub from: Vec<String>,
    /// Percent of the traffic added to --to at each step, 1 to 100 [default: 10].
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=100))]
    step: Option<u32>,
    /// How long each step is watched before it is judged, at least 1s (proxies report once a second)
    /// [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = interval)]
    interval: Option<Duration>,
    /// Highest share of --to's requests that may fail (5xx), e.g. 1% or 0.5% [default: 1%].
    #[arg(long, value_name = "PERCENT")]
    max_error_rate: Option<crate::cli::progressive::Percent>,
    /// Highest p99 latency of --to's requests, e.g. 250ms, compared with the upper bound of the
    /// latency bucket holding the p99 [default: not checked].
    #[arg(long, value_name = "DURATION", value_parser = max_p99)]
    pub max_p99: Option<Duration>,
    /// Requests to --to a step needs before it is judged; with fewer, the step waits another interval
    /// [default: 20].
    #[arg(long, value_name = "N")]
    min_requests: Option<u64>,
    /// Intervals a step may wait for --min-requests before the shift gives up and rolls back
    /// [default: 5].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_idle_intervals: Option<u32>,
}

impl ProgressiveArgs {
    /// The first flag given that only means something with --to.
    fn stray_flag(&self) -> Option<&'static str> {
        [
            ("--from", !self.from.is_empty()),
            ("--step", self.step.is_some()),
            ("--interval", self.interval.is_some()),
            ("--max-error-rate", self.max_error_rate.is_some()),
            ("--max-p99", self.max_p99.is_some()),
            ("--min-requests", self.min_requests.is_some()),
            ("--max-idle-intervals", self.max_idle_intervals.is_some()),
        ]
        .into_iter()
        .find(|(_, given)| *given)
        .map(|(flag, _)| flag)
    }

    pub fn step(&self) -> u32 {
        self.step.unwrap_or(10)
    }
    pub fn interval(&self) -> Duration {
        self.interval.unwrap_or(Duration::from_secs(30))
    }
    pub fn max_error_rate(&self) -> crate::cli::progressive::Percent {
        self.max_error_rate
            .unwrap_or(crate::cli::progressive::Percent::ONE)
    }
    pub fn min_requests(&self) -> u64 {
        self.min_requests.unwrap_or(20)
    }
    pub fn max_idle_intervals(&self) -> u32 {
        self.max_idle_intervals.unwrap_or(5)
    }
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub service: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

const APPLY_LONG: &str = "\
Create or update resources from YAML files, directories or stdin.

A directory contributes every *.yaml and *.yml file directly inside it (not in subdirectories), in
name order; `-` reads stdin. A file named twice is sent once. The control plane parses and validates the
whole batch and changes nothing if any document is refused; every problem is printed with its file and
line.

Unless --no-wait, weftctl then waits (up to --timeout, at most 5m) until every proxy whose configuration
changed has acknowledged it, and names each proxy that refused it (NACK, with the reason), has not
answered yet, or is disconnected.";

const APPLY_EXAMPLES: &str = "\
Examples:
  weftctl apply -f reviews.yaml
  weftctl apply -f examples/resources/ -f extra.yaml
  cat route.yaml | weftctl apply -f -
  weftctl apply -f route.yaml --dry-run       # show the diff, change nothing
  weftctl apply -f route.yaml --timeout 30s   # wait longer for acknowledgements

Exit codes: 0 applied (and acknowledged by every affected proxy), 1 refused or failed, 2 bad usage,
3 applied but not acknowledged by every affected proxy.";

const GET_LONG: &str = "\
Show resources as a table, YAML or JSON.

KIND is Service, Workload, HTTPRoute, AuthorizationPolicy or MeshConfig; lower-case, plural and short
forms work (svc, wl, route, policy). Without NAME, every resource of the kind in the namespace (-n,
default `default`; MeshConfig: every namespace) or in all namespaces (-A) is listed as a table. With
NAME, that one resource is printed as YAML.";

const GET_EXAMPLES: &str = "\
Examples:
  weftctl get services
  weftctl get svc -n shop
  weftctl get routes -A
  weftctl get route reviews -o json
  weftctl get meshconfig -o yaml";

const DELETE_LONG: &str = "\
Delete one resource.

The control plane refuses to delete a resource another one refers to (e.g. a Service named by an
HTTPRoute). Unless --no-wait, weftctl waits until every affected proxy has acknowledged the change, as
`apply` does.";

const DELETE_EXAMPLES: &str = "\
Examples:
  weftctl delete route reviews
  weftctl delete svc ratings -n shop --no-wait

Exit codes: 0 deleted (and acknowledged by every affected proxy), 1 refused or failed, 2 bad usage,
3 deleted but not acknowledged by every affected proxy.";

const STATUS_LONG: &str = "\
Every proxy the control plane knows, connected or within its grace period: PROXY (namespace/name),
IDENTITY, ADDRESS, READY (the app's readiness probe), CONNECTED, SENT and ACKED (the config version last
sent to it and the last it acknowledged), LAST-NACK (version and reason), CERT-EXPIRES and SEEN (when the
control plane last heard from it).

With replicas on etcd, any replica lists every proxy of the mesh, once each: REPLICA names the replica
holding its stream, and SENT-REV, ACKED-REV and LAST-NACK (rev N: reason) are store revisions, which every
replica shares (versions are each replica's own numbering; -o json has both). The summary on stderr
counts the connected proxies of each replica.";

const STATUS_EXAMPLES: &str = "\
Examples:
  weftctl status
  weftctl status -o json | jq '.proxies[] | select(.lastNack)'
  weftctl status -o json | jq '.proxies[] | select(.ackedRevision < $rev)' --argjson rev 12";

#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// A YAML file, a directory of them, or `-` for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    pub files: Vec<PathBuf>,
    /// Validate and print what would change, with diffs; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// Do not wait for the affected proxies to acknowledge the change.
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for acknowledgements (at most 5m).
    #[arg(long, default_value = "10s", value_parser = wait_timeout, conflicts_with = "no_wait")]
    pub timeout: Duration,
}

impl WaitArgs {
    /// How long to ask the control plane to wait, if at all.
    pub fn wait(&self) -> Option<Duration> {
        (!self.no_wait).then_some(self.timeout)
    }
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// Service, Workload, HTTPRoute, AuthorizationPolicy or MeshConfig (plural and short forms work).
    #[arg(value_parser = kind)]
    pub kind: Kind,
    /// One resource; without it, every resource of the kind.
    #[arg(value_parser = name)]
    pub name: Option<String>,
    /// The namespace [default: default; for MeshConfig: every namespace].
    #[arg(short = 'n', long, value_parser = name)]
    pub namespace: Option<String>,
    /// List the kind in every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "name"])]
    pub all_namespaces: bool,
    /// Output format [default: table for lists, yaml for one resource].
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
}

#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    /// Service, Workload, HTTPRoute, AuthorizationPolicy or MeshConfig (plural and short forms work).
    #[arg(value_parser = kind)]
    pub kind: Kind,
    #[arg(value_parser = name)]
    pub name: String,
    #[arg(short = 'n', long, default_value = "default", value_parser = name)]
    pub namespace: String,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: ListFormat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Create a join token bound to one service account.
    #[command(
        long_about = "Create a join token bound to one service account.\n\nThe token alone is printed on \
                      stdout, so it can be captured by a script; its id, identity and expiry go to stderr. \
                      The secret is shown only this once. The control plane refuses a --ttl above its \
                      --max-token-ttl (24h unless set) and any token for its own identity \
                      (weft-system/weft-control). With --workload (and --label), the certificates it \
                      obtains may register only that workload with exactly those labels.",
        after_long_help = "Examples:\n  weftctl token create --namespace default --service-account reviews\n  \
                           TOKEN=$(weftctl token create --namespace shop --service-account cart --ttl 10m)\n  \
                           weftctl token create --namespace default --service-account reviews --max-uses 1 \\\n    \
                           --workload reviews-v2 --label app=reviews --label version=v2"
    )]
    Create {
        #[arg(long, value_parser = name)]
        namespace: String,
        #[arg(long, value_parser = name)]
        service_account: String,
        /// How long the token can be used to join (e.g. 10m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = token_ttl)]
        ttl: Duration,
        /// How many certificates the token may obtain (default: any number until it expires, so the
        /// replicas of a workload can share it); 1 makes it single-use.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        max_uses: Option<u64>,
        /// Bind the token to one workload: a proxy that joins with it may register only this workload
        /// name (and exactly the --label pairs given), before and after renewals.
        #[arg(long, value_name = "NAME")]
        workload: Option<String>,
        /// A label KEY=VALUE the bound workload must register (repeatable; needs --workload).
        #[arg(long = "label", value_parser = label, requires = "workload")]
        labels: Vec<(String, String)>,
    },
    /// List join tokens with their identity, state, expiry and use count (never their secrets).
    #[command(after_long_help = "Examples:\n  weftctl token list\n  weftctl token list -o json")]
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: ListFormat,
    },
    /// Revoke a join token by id: the control plane refuses it from now on.
    #[command(after_long_help = "Examples:\n  weftctl token revoke 3f9c2a17")]
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

/// Span encodings a sidecar can export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TraceFormat {
    /// Zipkin v2 JSON.
    Zipkin,
    /// OTLP/HTTP with JSON encoding.
    Otlp,
}

impl TraceFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            TraceFormat::Zipkin => "zipkin",
            TraceFormat::Otlp => "otlp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a self-signed root CA (ECDSA P-256) in DIR: ca.crt, ca.key (0600), bundle.crt.
    #[command(
        after_long_help = "Examples:\n  weftctl ca init --dir ca --trust-domain weft.local\n  \
                                 weftctl ca init --dir ca --intermediate --validity 365d"
    )]
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

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Issue a workload certificate for a SPIFFE ID: writes OUT.crt (leaf + chain), OUT.key, OUT-bundle.crt.
    ///
    /// The key and CSR are generated here and the CSR is signed by the CA in --ca-dir.
    #[command(
        after_long_help = "Examples:\n  weftctl cert issue --ca-dir ca --id spiffe://weft.local/ns/default/sa/backend --out backend"
    )]
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        /// The workload's SPIFFE ID, e.g. spiffe://weft.local/ns/default/sa/reviews.
        #[arg(long)]
        id: SpiffeId,
        /// Certificate lifetime (e.g. `12h`), at most 24h: a leaf cannot be revoked in explicit mode.
        #[arg(long, default_value = "24h", value_parser = leaf_ttl)]
        ttl: Duration,
        /// Output path prefix.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Parses the command line, noting where the token file's path came from.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Command::Remote(RemoteCommand::Shift(s)) = &cli.command {
        if let (None, Some(flag)) = (&s.progressive.to, s.progressive.stray_flag()) {
            return Err(Cli::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                format!("{flag} is for a progressive shift: give --to SUBSET with it"),
            ));
        }
    }
    cli.remote.token_origin = match matches.value_source("token_file") {
        Some(ValueSource::CommandLine) => TokenOrigin::Flag,
        Some(ValueSource::EnvVariable) => TokenOrigin::Env,
        _ => TokenOrigin::Default,
    };
    Ok(cli)
}

fn kind(s: &str) -> Result<Kind, String> {
    Kind::parse(s).ok_or_else(|| {
        let valid: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown kind; valid kinds: {}", valid.join(", "))
    })
}

/// Names and namespaces follow the resources' own rule, so they are also safe as URL path segments.
fn name(s: &str) -> Result<String, String> {
    dns_label(s).map(|()| s.to_string())
}

fn wait_timeout(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.get().is_zero() {
        return Err("must be more than zero (use --no-wait not to wait)".into());
    }
    if d > MAX_WAIT {
        return Err(format!(
            "at most {MAX_WAIT}: the control plane waits no longer"
        ));
    }
    Ok(d)
}

fn interval(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.get() < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s: proxies report their counts once a second".into());
    }
    Ok(d)
}

fn max_p99(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.get().is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// A workload leaf lives 1s to 24h (the same ceiling as MeshConfig `certificateTtl`).
fn leaf_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    let max = weft_api::resources::MAX_CERTIFICATE_TTL;
    if d.get().as_secs() == 0 || d > max {
        return Err(format!(
            "{s} is outside 1s..24h (a stolen leaf stays valid until it expires)"
        ));
    }
    Ok(d)
}

fn token_ttl(s: &str) -> Result<Duration, String> {
    let d: Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.get().as_secs() == 0 {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn leaf_lifetimes_are_capped_at_a_day() {
        assert!(leaf_ttl("24h").is_ok());
        let e = leaf_ttl("25h").unwrap_err();
        assert!(e.contains("outside 1s..24h"), "{e}");
        assert!(leaf_ttl("0s").is_err());
    }

    fn ok(args: &[&str]) -> Cli {
        parse(std::iter::once("weftctl").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn usage_error(args: &[&str]) -> clap::Error {
        match parse(std::iter::once("weftctl").chain(args.iter().copied())) {
            Ok(cli) => panic!("{args:?} parsed: {cli:?}"),
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
                e
            }
        }
    }

    fn remote(cli: Cli) -> RemoteCommand {
        match cli.command {
            Command::Remote(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn apply_takes_several_sources_and_wait_options() {
        let RemoteCommand::Apply(a) =
            remote(ok(&["apply", "-f", "a.yaml", "-f", "dir", "-f", "-"]))
        else {
            panic!()
        };
        assert_eq!(a.files, [PathBuf::from("a.yaml"), "dir".into(), "-".into()]);
        assert!(!a.dry_run);
        assert_eq!(a.wait.wait(), Some(Duration::from_secs(10)));

        let RemoteCommand::Apply(a) = remote(ok(&[
            "apply",
            "--filename",
            "a.yaml",
            "--dry-run",
            "--timeout",
            "250ms",
        ])) else {
            panic!()
        };
        assert!(a.dry_run);
        assert_eq!(a.wait.wait(), Some(Duration::from_millis(250)));

        let RemoteCommand::Apply(a) = remote(ok(&["apply", "-f", "a.yaml", "--no-wait"])) else {
            panic!()
        };
        assert_eq!(a.wait.wait(), None);
    }

    #[test]
    fn apply_refuses_bad_usage() {
        usage_error(&["apply"]);
        usage_error(&["apply", "-f", "a", "--timeout", "10"]);
        usage_error(&["apply", "-f", "a", "--timeout", "0s"]);
        let e = usage_error(&["apply", "-f", "a", "--timeout", "6m"]);
        assert!(e.to_string().contains("at most 5m"), "{e}");
        let e = usage_error(&["apply", "-f", "a", "--no-wait", "--timeout", "5s"]);
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn get_accepts_kind_forms_and_scopes() {
        for (word, want) in [
            ("svc", Kind::Service),
            ("services", Kind::Service),
            ("HTTPRoute", Kind::HttpRoute),
            ("routes", Kind::HttpRoute),
            ("policies", Kind::AuthorizationPolicy),
            ("wl", Kind::Workload),
            ("meshconfig", Kind::MeshConfig),
        ] {
            let RemoteCommand::Get(g) = remote(ok(&["get", word])) else {
                panic!()
            };
            assert_eq!(g.kind, want, "{word}");
            assert_eq!(
                (g.name, g.namespace, g.all_namespaces, g.output),
                (None, None, false, None)
            );
        }
        let RemoteCommand::Get(g) =
            remote(ok(&["get", "route", "reviews", "-n", "shop", "-o", "json"]))
        else {
            panic!()
        };
        assert_eq!(g.name.as_deref(), Some("reviews"));
        assert_eq!(g.namespace.as_deref(), Some("shop"));
        assert_eq!(g.output, Some(Format::Json));
        let RemoteCommand::Get(g) = remote(ok(&["get", "svc", "-A", "-o", "yaml"])) else {
            panic!()
        };
        assert!(g.all_namespaces);
    }

    #[test]
    fn get_refuses_unknown_kinds_bad_names_and_conflicts() {
        let e = usage_error(&["get", "pods"]);
        assert!(
            e.to_string().contains("valid kinds: MeshConfig, Service"),
            "{e}"
        );
        let e = usage_error(&["get", "svc", "Reviews"]);
        assert!(e.to_string().contains("lowercase"), "{e}");
        usage_error(&["get", "svc", "a/b"]);
        usage_error(&["get", "svc", "-n", "x?y"]);
        usage_error(&["get", "svc", "-A", "-n", "shop"]);
        usage_error(&["get", "svc", "reviews", "-A"]);
        usage_error(&["get", "svc", "-o", "xml"]);
    }

    #[test]
    fn delete_defaults_to_the_default_namespace() {
        let RemoteCommand::Delete(d) = remote(ok(&["delete", "svc", "reviews"])) else {
            panic!()
        };
        assert_eq!(
            (d.kind, d.name.as_str(), d.namespace.as_str()),
            (Kind::Service, "reviews", "default")
        );
        assert_eq!(d.wait.wait(), Some(Duration::from_secs(10)));
        usage_error(&["delete", "svc"]);
        usage_error(&["delete", "gadget", "x"]);
    }

    #[test]
    fn token_workload_claims() {
        let RemoteCommand::Token(TokenCommand::Create {
            workload, labels, ..
        }) = remote(ok(&[
            "token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "cart",
            "--workload",
            "cart-1",
            "--label",
            "app=cart",
        ]))
        else {
            panic!()
        };
        assert_eq!(workload.as_deref(), Some("cart-1"));
        assert_eq!(labels, [("app".to_string(), "cart".to_string())]);
        usage_error(&[
            "token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "cart",
            "--label",
            "app=cart",
        ]);
    }

    #[test]
    fn token_commands() {
        let RemoteCommand::Token(TokenCommand::Create {
            namespace,
            service_account,
            ttl,
            max_uses,
            ..
        }) = remote(ok(&[
            "token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "cart",
        ]))
        else {
            panic!()
        };
        assert_eq!(
            (namespace.as_str(), service_account.as_str()),
            ("shop", "cart")
        );
        assert_eq!(ttl, Duration::from_secs(3600));
        assert_eq!(max_uses, None);
        usage_error(&["token", "create", "--namespace", "shop"]);
        usage_error(&[
            "token",
            "create",
            "--namespace",
            "shop",
            "--service-account",
            "cart",
            "--max-uses",
            "0",
        ]);
        usage_error(&[
            "token",
            "create",
            "--namespace",
            "s",
            "--service-account",
            "c",
            "--ttl",
            "500ms",
        ]);
        let RemoteCommand::Token(TokenCommand::List { output }) =
            remote(ok(&["token", "list", "-o", "json"]))
        else {
            panic!()
        };
        assert_eq!(output, ListFormat::Json);
        usage_error(&["token", "list", "-o", "yaml"]);
        let RemoteCommand::Token(TokenCommand::Revoke { id }) =
            remote(ok(&["token", "revoke", "abc"]))
        else {
            panic!()
        };
        assert_eq!(id, "abc");
    }

    fn shift(args: &[&str]) -> ShiftArgs {
        match remote(ok(args)) {
            RemoteCommand::Shift(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn progressive_shift_arguments() {
        let s = shift(&[
            "shift",
            "reviews",
            "--to",
            "v2",
            "--step",
            "10",
            "--interval",
            "30s",
            "--max-error-rate",
            "1%",
            "--max-p99",
            "250ms",
        ]);
        let p = &s.progressive;
        assert_eq!(p.to.as_deref(), Some("v2"));
        assert!(s.targets.is_empty() && p.from.is_empty());
        assert_eq!((p.step(), p.interval()), (10, Duration::from_secs(30)));
        assert_eq!(p.max_error_rate().fraction(), 0.01);
        assert_eq!(p.max_p99, Some(Duration::from_millis(250)));
        assert_eq!((p.min_requests(), p.max_idle_intervals()), (20, 5));
        let p = shift(&["shift", "reviews", "--to", "v2"]).progressive;
        assert_eq!(
            (p.step(), p.interval()),
            (10, Duration::from_secs(30)),
            "defaults"
        );
        assert_eq!((p.max_error_rate().fraction(), p.max_p99), (0.01, None));
        assert_eq!(s.wait.wait(), Some(Duration::from_secs(10)));

        let s = shift(&[
            "shift",
            "reviews",
            "--to",
            "v2",
            "--from",
            "v1,v3",
            "--from",
            "v4",
            "--step",
            "100",
            "--max-error-rate",
            "0.5%",
            "--min-requests",
            "3",
            "--timeout",
            "30s",
        ]);
        let p = &s.progressive;
        assert_eq!(p.from, ["v1", "v3", "v4"]);
        assert_eq!(p.step(), 100);
        assert_eq!(p.max_error_rate().fraction(), 0.005);
        assert_eq!((p.max_p99, p.min_requests()), (None, 3));
        assert_eq!(s.wait.wait(), Some(Duration::from_secs(30)));
        // Plain shifts are as before.
        let s = shift(&["shift", "reviews", "v1=90", "v2=10"]);
        assert_eq!(s.progressive.to, None);
        assert_eq!(s.targets, ["v1=90", "v2=10"]);
    }

    #[test]
    fn progressive_shift_refuses_bad_values_and_mixtures() {
        fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
            [&["shift", "reviews", "--to", "v2"][..], extra].concat()
        }
        for (extra, says) in [
            (&["--step", "0"][..], "0"),
            (&["--step", "101"], "101"),
            (&["--interval", "500ms"], "at least 1s"),
            (&["--interval", "30"], "unit"),
            (&["--max-error-rate", "1"], "with %"),
            (&["--max-error-rate", "101%"], "0% to 100%"),
            (&["--max-p99", "0ms"], "more than zero"),
            (&["--max-p99", "fast"], "invalid duration"),
            (&["--max-idle-intervals", "0"], "0"),
            (&["--no-wait"], "cannot be used"),
            (&["v1=90"], "cannot be used"),
            (&["--header", "x=1"], "cannot be used"),
        ] {
            let e = usage_error(&with(extra));
            assert!(e.to_string().contains(says), "{extra:?}: {e}");
        }
        // Progressive flags need --to; a plain shift needs its weights.
        for flag in [
            &["--step", "10"][..],
            &["--interval", "5s"],
            &["--max-error-rate", "1%"],
            &["--max-p99", "1s"],
            &["--min-requests", "5"],
            &["--max-idle-intervals", "2"],
            &["--from", "v1"],
        ] {
            let e = usage_error(&[&["shift", "reviews", "v2=100"][..], flag].concat());
            assert!(e.to_string().contains("--to"), "{flag:?}: {e}");
        }
        usage_error(&["shift", "reviews"]);
    }

    #[test]
    fn server_and_token_file_come_from_flags_anywhere_with_their_origin() {
        let cli = ok(&["status"]);
        // Defaults, unless the test runner's environment sets the variables.
        if std::env::var_os("WEFT_TOKEN_FILE").is_none() {
            assert_eq!(cli.remote.token_file, PathBuf::from(DEFAULT_TOKEN_FILE));
            assert_eq!(cli.remote.token_origin, TokenOrigin::Default);
        }
        if std::env::var_os("WEFT_SERVER").is_none() {
            assert_eq!(cli.remote.server.to_string(), DEFAULT_SERVER);
        }
        // Global flags work before or after the subcommand.
        for args in [
            &["--server", "10.0.0.5:9000", "--token-file", "/t", "status"][..],
            &[
                "status",
                "--server",
                "http://10.0.0.5:9000/",
                "--token-file",
                "/t",
            ][..],
        ] {
            let cli = ok(args);
            assert_eq!(
                cli.remote.server.to_string(),
                "http://10.0.0.5:9000",
                "{args:?}"
            );
            assert_eq!(cli.remote.token_file, PathBuf::from("/t"));
            assert_eq!(cli.remote.token_origin, TokenOrigin::Flag, "{args:?}");
        }
        let e = usage_error(&["--server", "https://cp:15014", "status"]);
        assert!(e.to_string().contains("plain HTTP"), "{e}");
    }

    #[test]
    fn offline_commands_keep_their_flags() {
        let cli = ok(&["ca", "init", "--dir", "ca", "--intermediate"]);
        assert!(matches!(
            cli.command,
            Command::Ca(CaCommand::Init {
                intermediate: true,
                ..
            })
        ));
        let cli = ok(&[
            "cert",
            "issue",
            "--ca-dir",
            "ca",
            "--id",
            "spiffe://weft.local/ns/default/sa/backend",
            "--out",
            "backend",
        ]);
        assert!(matches!(
            cli.command,
            Command::Cert(CertCommand::Issue { .. })
        ));
    }

    #[test]
    fn every_help_page_renders_with_examples() {
        let mut root = Cli::command();
        root.build();
        let help = root.render_long_help().to_string();
        assert!(
            help.contains("Exit codes") && help.contains("Examples"),
            "{help}"
        );
        for sub in root
            .get_subcommands_mut()
            .filter(|s| s.get_name() != "help")
        {
            let name = sub.get_name().to_string();
            if sub.has_subcommands() {
                for leaf in sub.get_subcommands_mut().filter(|l| l.get_name() != "help") {
                    let text = leaf.render_long_help().to_string();
                    assert!(
                        text.contains("Examples"),
                        "{name} {}: {text}",
                        leaf.get_name()
                    );
                }
            } else {
                let text = sub.render_long_help().to_string();
                assert!(text.contains("Examples"), "{name}: {text}");
            }
        }
    }
}
