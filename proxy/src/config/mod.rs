//! The proxy's bootstrap file (`weft-proxy run --config FILE`): identity files, the ports it serves,
//! explicit outbound listeners and limits. Parsed strictly (unknown fields refused) and then validated;
//! every error names the file, line, field and reason.

use serde::{de, Deserialize, Deserializer, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use weft_api::{Duration, OutboundListener};

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] weft_api::YamlError),
    #[error("{file}: field `{field}`: {reason}")]
    Invalid {
        file: String,
        field: String,
        reason: String,
    },
}

/// Files that make up the proxy's identity. Relative paths are relative to the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFiles {
    /// PEM: the leaf certificate followed by any intermediates.
    pub cert: PathBuf,
    /// PEM: the leaf's PKCS#8 private key.
    pub key: PathBuf,
    /// PEM: the trust bundle (one or more root certificates).
    pub bundle: PathBuf,
}

/// Where identity and config come from when a control plane runs the mesh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The control plane's proxy API (TLS).
    pub address: SocketAddr,
    /// PEM bundle of the mesh CA: pins who the control plane may be. This, or `ca_fingerprint`.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// SHA-256 fingerprint of the mesh CA's root certificate (`sha256:AB:CD:...`, as weft-control logs
    /// it at start): the root is taken from the control plane's chain only if it matches.
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// The identity the control plane must present; default
    /// `spiffe://<trust domain>/ns/weft-system/sa/weft-control`.
    #[serde(default)]
    pub server_identity: Option<weft_certs::SpiffeId>,
    /// A file holding the join token (or set `WEFT_JOIN_TOKEN`); needed only without a cached certificate.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Where the key (0600), certificate, bundle and the last good config are kept across restarts,
    /// and the key of a join under way (0600), so a retry after a lost answer asks for the same key.
    pub state_dir: PathBuf,
}

/// The workload this proxy sits beside, as registered with the control plane.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Unique in its namespace (a pod name).
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The identity asked for: `spiffe://<trust domain>/ns/<namespace>/sa/<service_account>`.
    pub service_account: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The address peers reach this proxy's tunnel on.
    pub address: std::net::IpAddr,
    /// The app's ports.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// How the app's readiness is checked; without one the app counts as ready.
    #[serde(default)]
    pub readiness: Option<ReadinessProbe>,
}

fn default_namespace() -> String {
    "default".into()
}

/// An HTTP GET (2xx/3xx = ready) or a TCP connect to the app, every `period`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadinessProbe {
    #[serde(default)]
    pub http: Option<HttpProbe>,
    #[serde(default)]
    pub tcp: Option<TcpProbe>,
    #[serde(default = "default_probe_period")]
    pub period: Duration,
    #[serde(default = "default_probe_timeout")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpProbe {
    pub port: u16,
    #[serde(default = "default_probe_path")]
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProbe {
    pub port: u16,
}

fn default_probe_period() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_probe_path() -> String {
    "/".into()
}

/// The tunnel (server side of the peer hop).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelConfig {
    /// Where peers connect (mTLS + HTTP/2). Default `0.0.0.0:15008`.
    #[serde(default = "default_tunnel_listen")]
    pub listen: SocketAddr,
    /// Host inbound traffic (tunnel and plaintext) is delivered to; the port comes from the request.
    /// Default: the workload's `address` with a `workload` section (peers then reach only what the app
    /// serves on the pod's address, never its loopback), else `127.0.0.1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_host: Option<std::net::IpAddr>,
    /// App ports peers may reach; empty means any port.
    #[serde(default)]
    pub allowed_ports: Vec<u16>,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            listen: default_tunnel_listen(),
            app_host: None,
            allowed_ports: Vec::new(),
        }
    }
}

/// Limits that bound what one client or peer can make the proxy hold. Every limit hit is logged and
/// counted in `weft_proxy_rejections_total`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections per listener (outbound listeners and the tunnel each); excess is closed at accept.
    pub max_connections: usize,
    /// Open connections on the admin port and on the health port (each); excess is closed at accept.
    /// They share `header_read_timeout`, so a client that sends no complete request head is cut.
    pub max_admin_connections: usize,
    /// Bytes of HTTP/1 request head (request line + headers); larger heads get 431.
    pub max_header_bytes: usize,
    /// Number of HTTP/1 request headers; more get 431.
    pub max_headers: usize,
    /// Time allowed to receive a complete HTTP/1 request head; then the connection is closed.
    pub header_read_timeout: Duration,
    /// HTTP/2 concurrent streams we accept per connection (from apps and from peers).
    pub max_concurrent_streams: u32,
    /// HTTP/2 header list size in bytes we accept.
    pub max_header_list_bytes: u32,
    /// Time allowed for a peer's TLS handshake on the tunnel.
    pub tls_handshake_timeout: Duration,
    /// Time allowed to connect to a peer or to the local app.
    pub connect_timeout: Duration,
    /// Idle keep-alive connections are pinged at this interval and closed if no answer arrives.
    pub keepalive_interval: Duration,
    /// How long `auto` listeners wait for the client's first bytes before treating it as opaque TCP
    /// (server-speaks-first protocols pay this once per connection).
    pub detect_timeout: Duration,
    /// Streams per peer connection before a second connection is opened.
    pub max_streams_per_peer_connection: usize,
    /// Largest compiled regular expression a pushed route may use; a route over it is refused (NACK).
    pub max_regex_bytes: usize,
    /// Request bodies up to this size are kept so a failed try can be retried; larger ones stream and
    /// are not retried.
    pub retry_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            max_admin_connections: 128,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1_000,
            max_header_list_bytes: 64 * 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            detect_timeout: Duration::from_millis(100),
            max_streams_per_peer_connection: 1_000,
            max_regex_bytes: 64 * 1024,
            retry_buffer_bytes: 64 * 1024,
        }
    }
}

/// The DNS responder (`dns:`); without the section the proxy answers no DNS. Apps reach it through
/// `weft-proxy init`'s port-53 redirect. See docs/proxy-config.md ("DNS") for the names it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// UDP and TCP, on the same address. Default `127.0.0.1:15053`.
    #[serde(default = "default_dns_listen")]
    pub listen: SocketAddr,
    /// Resolvers (`ip:port`) asked about names outside the mesh, in order, each for at most
    /// `forward_timeout`. Empty (the default): such names get NXDOMAIN.
    #[serde(default)]
    pub upstreams: Vec<SocketAddr>,
    /// The domain under which `<service>.<namespace>.svc.<cluster_domain>` resolves. Default
    /// `cluster.local`.
    #[serde(default = "default_cluster_domain")]
    pub cluster_domain: String,
    /// TTL of mesh answers, whole seconds, at most 1h. Default 5s: VIPs are stable, but services come
    /// and go.
    #[serde(default = "default_dns_ttl")]
    pub ttl: Duration,
    /// Time one upstream gets to answer before the next is tried; SERVFAIL when none answers.
    /// Default 2s.
    #[serde(default = "default_forward_timeout")]
    pub forward_timeout: Duration,
    /// Questions relayed upstream at once; further ones get SERVFAIL. Default 256.
    #[serde(default = "default_max_forwards")]
    pub max_forwards: usize,
    /// Open TCP connections; further ones are closed at accept. Default 64.
    #[serde(default = "default_dns_max_tcp")]
    pub max_tcp_connections: usize,
    /// A TCP connection with no complete question for this long is closed. Default 10s.
    #[serde(default = "default_dns_idle")]
    pub tcp_idle_timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: default_dns_listen(),
            upstreams: Vec::new(),
            cluster_domain: default_cluster_domain(),
            ttl: default_dns_ttl(),
            forward_timeout: default_forward_timeout(),
            max_forwards: default_max_forwards(),
            max_tcp_connections: default_dns_max_tcp(),
            tcp_idle_timeout: default_dns_idle(),
        }
    }
}

fn default_dns_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15053))
}
fn default_cluster_domain() -> String {
    "cluster.local".into()
}
fn default_dns_ttl() -> Duration {
    Duration::from_secs(5)
}
fn default_forward_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_max_forwards() -> usize {
    256
}
fn default_dns_max_tcp() -> usize {
    64
}
fn default_dns_idle() -> Duration {
    Duration::from_secs(10)
}

/// The admin endpoint (`admin:`). The old form, a bare address, still reads: `admin: 127.0.0.1:15000`.
#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    /// Loopback only. Default `127.0.0.1:15000`.
    pub listen: SocketAddr,
    /// Serve `POST /shutdown`. Off by default: every process in the pod reaches the admin port, and the
    /// app must not be able to stop its own sidecar (signals stop the proxy).
    pub shutdown: bool,
}

impl<'de> Deserialize<'de> for AdminConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default = "default_admin_listen")]
            listen: SocketAddr,
            #[serde(default)]
            shutdown: bool,
        }
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = AdminConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an address (`127.0.0.1:15000`) or `{listen, shutdown}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AdminConfig, E> {
                let listen = v.parse().map_err(|_| {
                    E::custom(format!("`{v}` is not an address such as 127.0.0.1:15000"))
                })?;
                Ok(AdminConfig {
                    listen,
                    shutdown: false,
                })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, m: A) -> Result<AdminConfig, A::Error> {
                let f = Full::deserialize(de::value::MapAccessDeserializer::new(m))?;
                Ok(AdminConfig {
                    listen: f.listen,
                    shutdown: f.shutdown,
                })
            }
        }
        d.deserialize_any(V)
    }
}

fn default_admin_listen() -> SocketAddr {
    default_admin().listen
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Identity from files (explicit mode). Exactly one of `identity` and `control`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityFiles>,
    /// Identity and config from a control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<ControlConfig>,
    /// The workload registered with the control plane (with `control`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadConfig>,
    #[serde(default)]
    pub tunnel: TunnelConfig,
    /// Admin endpoint (`/config`, `/identity`, `POST /shutdown` when enabled); loopback only. Either an
    /// address or `{listen, shutdown}`. Default `127.0.0.1:15000`, shutdown off.
    #[serde(default = "default_admin")]
    pub admin: AdminConfig,
    /// Health endpoint (`/ready`, `/live`, `/metrics`). Default `0.0.0.0:15020`.
    #[serde(default = "default_health")]
    pub health: SocketAddr,
    /// Explicit local listeners.
    #[serde(default)]
    pub outbound: OutboundList,
    /// Transparent mode: listeners for the app's traffic that `weft-proxy init` redirects here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interception: Option<InterceptionConfig>,
    #[serde(default)]
    pub limits: Limits,
    /// On SIGTERM, how long in-flight requests and streams get to finish before the proxy exits.
    #[serde(default = "default_drain")]
    pub drain_timeout: Duration,
    /// The DNS responder; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsConfig>,
    /// One JSON line per request and per TCP connection; absent: no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// Spans of each request, exported to a collector; absent: trace headers pass untouched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

/// Span export (`tracing:`). See docs/proxy-config.md ("Tracing").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where batches of spans are POSTed: a Zipkin `/api/v2/spans` or an OTLP/HTTP `/v1/traces` URL.
    pub collector: String,
    #[serde(default)]
    pub format: TraceFormat,
    /// Fraction of the traces this proxy starts that are recorded (default 1); an incoming trace's
    /// sampled flag is followed.
    #[serde(default = "default_sample")]
    pub sample: f64,
    /// Longest a span waits in a batch (default 1s).
    #[serde(default = "default_flush")]
    pub flush_interval: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Zipkin v2 JSON.
    #[default]
    Zipkin,
    /// OTLP/HTTP with JSON encoding.
    Otlp,
}

fn default_flush() -> Duration {
    Duration::from_secs(1)
}

/// The access log (`access_log:`). Fields of each line: docs/proxy-config.md ("Access log").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// A file to append to, or `-` (the default) for standard output.
    #[serde(default = "default_access_log_path")]
    pub path: PathBuf,
    /// Fraction of successful requests logged, 0 to 1 (default 1). Failures are always logged.
    #[serde(default = "default_sample")]
    pub sample: f64,
}

fn default_access_log_path() -> PathBuf {
    PathBuf::from("-")
}

fn default_sample() -> f64 {
    1.0
}

/// Transparent interception in a pod (see docs/interception.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterceptionConfig {
    /// Where the app's redirected outgoing TCP arrives. Default `0.0.0.0:15001`.
    #[serde(default = "default_intercept_outbound")]
    pub outbound: SocketAddr,
    /// Where redirected incoming TCP from outside the mesh arrives. Default `0.0.0.0:15006`.
    #[serde(default = "default_intercept_inbound")]
    pub inbound: SocketAddr,
    /// SO_MARK on every socket the proxy opens to the network, so `init`'s rules let it through
    /// unredirected. Must match `weft-proxy init --mark`. Default 1337.
    #[serde(default = "default_mark")]
    pub mark: u32,
    /// Overrides the mesh's `mtlsMode` for this workload: `STRICT` refuses plaintext on `inbound`,
    /// `PERMISSIVE` delivers it to the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls_mode: Option<weft_api::resources::MtlsMode>,
}

/// The socket mark `weft-proxy init` exempts by default.
pub const DEFAULT_MARK: u32 = 1337;

fn default_intercept_outbound() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15001))
}
fn default_intercept_inbound() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15006))
}
fn default_mark() -> u32 {
    DEFAULT_MARK
}

fn default_tunnel_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15008))
}
fn default_admin() -> AdminConfig {
    AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 15000)),
        shutdown: false,
    }
}
fn default_health() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 15020))
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

/// Outbound listeners; duplicate listen addresses are refused while parsing, so the error carries the
/// line of the second one.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct OutboundList(pub Vec<OutboundListener>);

impl<'de> Deserialize<'de> for OutboundList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = OutboundList;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of outbound listeners")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OutboundList, A::Error> {
                let mut seen = HashSet::new();
                let mut out = Vec::new();
                while let Some(l) = seq.next_element::<OutboundListener>()? {
                    if !seen.insert(l.listen) {
                        return Err(de::Error::custom(format!(
                            "listen address {} is used by an earlier listener",
                            l.listen
                        )));
                    }
                    out.push(l);
                }
                Ok(OutboundList(out))
            }
        }
        d.deserialize_seq(V)
    }
}

impl ProxyConfig {
    /// Reads, parses and validates `path`; relative identity paths are resolved against its directory.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = path.display().to_string();
        let mut cfg: ProxyConfig = weft_api::yaml::from_str(&file, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut paths: Vec<&mut PathBuf> = Vec::new();
        if let Some(id) = cfg.identity.as_mut() {
            paths.extend([&mut id.cert, &mut id.key, &mut id.bundle]);
        }
        if let Some(c) = cfg.control.as_mut() {
            paths.push(&mut c.state_dir);
            paths.extend(c.ca_bundle.as_mut());
            paths.extend(c.token_file.as_mut());
        }
        if let Some(a) = cfg.access_log.as_mut() {
            if a.path.as_os_str() != "-" {
                paths.push(&mut a.path);
            }
        }
        for p in paths {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        cfg.validate(&file)?;
        Ok(cfg)
    }

    /// Rules that span fields: no two listeners on one address, limits that make sense.
    fn validate(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            field,
            reason,
        };
        let mut taken = vec![
            ("tunnel.listen".to_string(), self.tunnel.listen),
            ("admin".to_string(), self.admin.listen),
            ("health".to_string(), self.health),
        ];
        match (&self.identity, &self.control, &self.workload) {
            (Some(_), None, None) | (None, Some(_), Some(_)) => {}
            (None, None, _) => {
                return Err(invalid(
                    "identity".into(),
                    "give `identity` (certificate files) or `control` (a control plane)".into(),
                ))
            }
            (Some(_), Some(_), _) => {
                return Err(invalid(
                    "control".into(),
                    "`identity` and `control` exclude each other".into(),
                ))
            }
            (None, Some(_), None) => {
                return Err(invalid(
                    "workload".into(),
                    "with `control`, `workload` says what to register".into(),
                ))
            }
            (Some(_), None, Some(_)) => {
                return Err(invalid(
                    "workload".into(),
                    "`workload` is registered with a control plane; add `control`".into(),
                ))
            }
        }
        if let Some(c) = &self.control {
            match (&c.ca_bundle, &c.ca_fingerprint) {
                (Some(_), None) => {}
                (None, Some(fp)) => {
                    if let Err(e) = weft_certs::pin::parse_fingerprint(fp) {
                        return Err(invalid("control.ca_fingerprint".into(), e.to_string()));
                    }
                }
                _ => {
                    return Err(invalid(
                        "control".into(),
                        "pin the mesh CA with exactly one of `ca_bundle` and `ca_fingerprint`"
                            .into(),
                    ))
                }
            }
        }
        if let Some(w) = &self.workload {
            if let Some(p) = &w.readiness {
                if p.http.is_some() == p.tcp.is_some() {
                    return Err(invalid(
                        "workload.readiness".into(),
                        "give exactly one of `http` and `tcp`".into(),
                    ));
                }
            }
        }
        if let Some(i) = &self.interception {
            if self.control.is_none() {
                return Err(invalid(
                    "interception".into(),
                    "transparent mode needs `control` (destinations are resolved from the mesh)"
                        .into(),
                ));
            }
            if i.mark == 0 {
                return Err(invalid(
                    "interception.mark".into(),
                    "must be non-zero (0 is every unmarked socket)".into(),
                ));
            }
            taken.push(("interception.outbound".into(), i.outbound));
            taken.push(("interception.inbound".into(), i.inbound));
        }
        for (i, l) in self.outbound.0.iter().enumerate() {
            taken.push((format!("outbound[{i}].listen"), l.listen));
            match l.target() {
                Err(reason) => return Err(invalid(format!("outbound[{i}]"), reason)),
                Ok(weft_api::Target::Fixed(up)) if up.target_port == 0 => {
                    return Err(invalid(
                        format!("outbound[{i}].target_port"),
                        "must be 1-65535".into(),
                    ))
                }
                Ok(weft_api::Target::Service { .. }) if self.control.is_none() => {
                    return Err(invalid(
                        format!("outbound[{i}].service"),
                        "a service listener needs `control` (its endpoints come from the control plane)"
                            .into(),
                    ))
                }
                Ok(_) => {}
            }
        }
        if let Some(a) = &self.access_log {
            if !(0.0..=1.0).contains(&a.sample) {
                return Err(invalid(
                    "access_log.sample".into(),
                    format!("{} is not a fraction between 0 and 1", a.sample),
                ));
            }
        }
        if let Some(t) = &self.tracing {
            if !(0.0..=1.0).contains(&t.sample) {
                return Err(invalid(
                    "tracing.sample".into(),
                    format!("{} is not a fraction between 0 and 1", t.sample),
                ));
            }
            match t.collector.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("http") && u.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        "tracing.collector".into(),
                        format!("`{}` is not an http:// URL", t.collector),
                    ))
                }
            }
            if t.flush_interval.get().is_zero() {
                return Err(invalid(
                    "tracing.flush_interval".into(),
                    "must be longer than 0".into(),
                ));
            }
        }
        if let Some(d) = &self.dns {
            taken.push(("dns.listen".to_string(), d.listen));
            d.validate()
                .map_err(|(f, r)| invalid(format!("dns.{f}"), r))?;
        }
        for (i, (field, addr)) in taken.iter().enumerate() {
            if addr.port() == 0 {
                continue;
            }
            if let Some((other, _)) = taken[..i].iter().find(|(_, a)| same_port(*a, *addr)) {
                return Err(invalid(
                    field.clone(),
                    format!("{addr} is already used by `{other}`"),
                ));
            }
        }
        if !self.admin.listen.ip().is_loopback() {
            return Err(invalid(
                "admin".into(),
                format!(
                    "{} is not a loopback address; the admin endpoint shows the proxy's config",
                    self.admin.listen
                ),
            ));
        }
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_connections", l.max_connections),
            ("limits.max_admin_connections", l.max_admin_connections),
            ("limits.max_header_bytes", l.max_header_bytes),
            ("limits.max_headers", l.max_headers),
            (
                "limits.max_streams_per_peer_connection",
                l.max_streams_per_peer_connection,
            ),
        ] {
            if v == 0 {
                return Err(invalid(name.into(), "must be greater than 0".into()));
            }
        }
        if l.max_header_bytes < 8192 {
            return Err(invalid(
                "limits.max_header_bytes".into(),
                "must be at least 8192 (the HTTP/1 parser's minimum buffer)".into(),
            ));
        }
        if l.max_concurrent_streams == 0 {
            return Err(invalid(
                "limits.max_concurrent_streams".into(),
                "must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

impl DnsConfig {
    /// The section's own rules, as (field within `dns`, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        if let Err(reason) = check_domain(&self.cluster_domain) {
            return Err(("cluster_domain".into(), reason));
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            let field = format!("upstreams[{i}]");
            if u.port() == 0 || u.ip().is_unspecified() {
                return Err((
                    field,
                    format!("{u} is not an address a resolver answers on"),
                ));
            }
            if *u == self.listen {
                return Err((field, format!("{u} is this responder's own address")));
            }
        }
        let ttl = self.ttl.get();
        if ttl.subsec_nanos() != 0 || ttl > std::time::Duration::from_secs(3600) {
            return Err(("ttl".into(), "must be whole seconds, at most 1h".into()));
        }
        for (name, v) in [
            ("max_forwards", self.max_forwards),
            ("max_tcp_connections", self.max_tcp_connections),
        ] {
            if v == 0 {
                return Err((name.into(), "must be greater than 0".into()));
            }
        }
        for (name, v) in [
            ("forward_timeout", self.forward_timeout),
            ("tcp_idle_timeout", self.tcp_idle_timeout),
        ] {
            if v.get().is_zero() {
                return Err((name.into(), "must be longer than 0".into()));
            }
        }
        Ok(())
    }
}

/// A DNS domain name in presentation form: labels of letters, digits and `-`, one trailing dot allowed.
fn check_domain(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return Err(format!("\"{name}\" must be 1 to 253 characters"));
    }
    for label in bare.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(format!(
                "\"{name}\" has label \"{label}\"; labels are 1-63 letters, digits or '-' (not at either end)"
            ));
        }
    }
    Ok(())
}

fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new();
        let p = dir.path.join("proxy.yaml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    /// A throwaway directory removed on drop (no extra crate for one test helper).
    mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "weft-config-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    const GOOD: &str = "identity:\n  cert: a.pem\n  key: a.key\n  bundle: ca.pem\ntunnel:\n  listen: 127.0.0.1:15008\nadmin: 127.0.0.1:15000\nhealth: 127.0.0.1:15020\noutbound:\n  - name: reviews\n    listen: 127.0.0.1:9080\n    peer: 127.0.0.1:15108\n    identity: spiffe://weft.local/ns/default/sa/reviews\n    target_port: 8080\n";

    #[test]
    fn good_file_resolves_relative_paths() {
        let (dir, p) = write(GOOD);
        let cfg = ProxyConfig::load(&p).unwrap();
        assert_eq!(cfg.identity.unwrap().cert, dir.path.join("a.pem"));
        assert_eq!(cfg.outbound.0.len(), 1);
        assert_eq!(cfg.outbound.0[0].target_port, Some(8080));
        assert_eq!(cfg.limits.max_headers, 100);
    }

    const CONTROL: &str = "control:\n  address: 127.0.0.1:15010\n  ca_bundle: mesh-ca.pem\n  state_dir: cache\nworkload:\n  name: reviews-1\n  service_account: reviews\n  address: 127.0.0.1\n  readiness: {tcp: {port: 9080}}\noutbound:\n  - listen: 127.0.0.1:9081\n    service: ratings\n    port: 9080\n";

    #[test]
    fn control_mode_with_service_listeners() {
        let (dir, p) = write(CONTROL);
        let cfg = ProxyConfig::load(&p).unwrap();
        let c = cfg.control.as_ref().unwrap();
        assert_eq!(c.state_dir, dir.path.join("cache"));
        assert_eq!(cfg.workload.as_ref().unwrap().namespace, "default");
        assert_eq!(
            cfg.outbound.0[0].target(),
            Ok(weft_api::Target::Service {
                namespace: "default".into(),
                name: "ratings".into(),
                port: 9080
            })
        );
    }

    #[test]
    fn identity_sources_and_listener_targets_must_make_sense() {
        let both = format!(
            "{GOOD}{}",
            CONTROL.replace(
                "outbound:\n  - listen: 127.0.0.1:9081\n    service: ratings\n    port: 9080\n",
                ""
            )
        );
        let (_d, p) = write(&both);
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("exclude each other"), "{e}");
        let (_d, p) = write(&CONTROL.replace("workload:", "workloads:"));
        assert!(ProxyConfig::load(&p).is_err());
        let no_workload =
            "control:\n  address: 127.0.0.1:15010\n  ca_bundle: ca.pem\n  state_dir: c\n";
        let (_d, p) = write(no_workload);
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("workload"), "{e}");
        let mixed = GOOD.replace(
            "    target_port: 8080\n",
            "    target_port: 8080\n    service: x\n",
        );
        let (_d, p) = write(&mixed);
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("outbound[0]") && e.contains("either"), "{e}");
        let service_without_control = GOOD.replace(
            "    peer: 127.0.0.1:15108\n    identity: spiffe://weft.local/ns/default/sa/reviews\n    target_port: 8080\n",
            "    service: reviews\n    port: 9080\n",
        );
        let (_d, p) = write(&service_without_control);
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("needs `control`"), "{e}");
        let two_probes = CONTROL.replace(
            "{tcp: {port: 9080}}",
            "{tcp: {port: 9080}, http: {port: 1}}",
        );
        let (_d, p) = write(&two_probes);
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
    }

    #[test]
    fn bad_identity_names_line_and_field() {
        let (_d, p) = write(&GOOD.replace(
            "spiffe://weft.local/ns/default/sa/reviews",
            "spiffe://Weft/x",
        ));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("proxy.yaml:13"), "{e}");
        assert!(e.contains("outbound[0].identity"), "{e}");
    }

    #[test]
    fn unknown_field_and_duplicate_listener() {
        let (_d, p) = write(&GOOD.replace(
            "    target_port: 8080\n",
            "    target_port: 8080\n    colour: red\n",
        ));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("outbound[0].colour") && e.contains(":15:"),
            "{e}"
        );
        let dup = format!(
            "{GOOD}  - listen: 127.0.0.1:9080\n    peer: 127.0.0.1:1\n    identity: spiffe://weft.local/x\n    target_port: 1\n"
        );
        let (_d, p) = write(&dup);
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("used by an earlier listener"), "{e}");
    }

    #[test]
    fn port_clash_and_public_admin_refused() {
        let (_d, p) = write(&GOOD.replace("listen: 127.0.0.1:9080", "listen: 127.0.0.1:15000"));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(
            e.contains("outbound[0].listen") && e.contains("`admin`"),
            "{e}"
        );
        let (_d, p) = write(&GOOD.replace("admin: 127.0.0.1:15000", "admin: 0.0.0.0:15000"));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn admin_takes_an_address_or_a_section_and_shutdown_is_off_by_default() {
        let (_d, p) = write(GOOD);
        let c = ProxyConfig::load(&p).unwrap();
        assert_eq!(c.admin.listen, "127.0.0.1:15000".parse().unwrap());
        assert!(!c.admin.shutdown);
        let (_d, p) = write(&GOOD.replace(
            "admin: 127.0.0.1:15000",
            "admin: {listen: 127.0.0.1:15100, shutdown: true}",
        ));
        let c = ProxyConfig::load(&p).unwrap();
        assert_eq!(c.admin.listen.port(), 15100);
        assert!(c.admin.shutdown);
        let (_d, p) = write(&GOOD.replace("admin: 127.0.0.1:15000", "admin: {shutdwn: true}"));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("shutdwn"), "{e}");
        let (_d, p) = write(&GOOD.replace("admin: 127.0.0.1:15000", "admin: localhost"));
        let e = ProxyConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("`localhost` is not an address"), "{e}");
    }

    #[test]
    fn dns_section_is_optional_with_defaults() {
        let (_d, p) = write(GOOD);
        assert!(ProxyConfig::load(&p).unwrap().dns.is_none());
        let (_d, p) = write(&format!("{CONTROL}dns: {{}}\n"));
        let d = ProxyConfig::load(&p).unwrap().dns.unwrap();
        assert_eq!(d.listen, "127.0.0.1:15053".parse().unwrap());
        assert_eq!(d.cluster_domain, "cluster.local");
        assert!(d.upstreams.is_empty());
        assert_eq!(d.ttl.get(), std::time::Duration::from_secs(5));
        let (_d, p) = write(&format!(
            "{CONTROL}dns:\n  listen: 127.0.0.1:5353\n  upstreams: [10.0.0.2:53, \"[fd00::2]:53\"]\n  cluster_domain: mesh.example.\n"
        ));
        let d = ProxyConfig::load(&p).unwrap().dns.unwrap();
        assert_eq!(d.upstreams.len(), 2);
    }

    #[test]
    fn bad_dns_fields_are_named() {
        for (yaml, want) in [
            (
                "dns:\n  upstreams: [10.0.0.2]\n",
                "proxy.yaml:16:15: field `dns.upstreams[0]`",
            ),
            ("dns:\n  colour: red\n", "dns.colour"),
            ("dns:\n  upstreams: [0.0.0.0:53]\n", "dns.upstreams[0]"),
            (
                "dns:\n  listen: 127.0.0.1:5353\n  upstreams: [127.0.0.1:5353]\n",
                "own address",
            ),
            ("dns:\n  cluster_domain: bad_domain\n", "dns.cluster_domain"),
            ("dns:\n  cluster_domain: a..b\n", "dns.cluster_domain"),
            ("dns:\n  ttl: 1500ms\n", "dns.ttl"),
            ("dns:\n  max_forwards: 0\n", "dns.max_forwards"),
            ("dns:\n  tcp_idle_timeout: 0s\n", "dns.tcp_idle_timeout"),
            ("access_log:\n  sample: 2\n", "access_log.sample"),
            ("tracing:\n  collector: ftp://x/\n", "tracing.collector"),
            ("dns:\n  listen: 127.0.0.1:15000\n", "`admin`"),
        ] {
            let (_d, p) = write(&format!("{GOOD}{yaml}"));
            let e = ProxyConfig::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn missing_file_is_named() {
        let e = ProxyConfig::load(Path::new("/nonexistent/weft.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/weft.yaml"), "{e}");
    }
}
