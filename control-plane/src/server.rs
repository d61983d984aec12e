//! Wiring: opens the state directory, builds the parts, binds both ports and runs until shutdown.

use crate::backend::etcd::{EtcdBackend, EtcdOptions};
use crate::backend::{self, dir::DirBackend, Backend as _, Collection, SharedBackend};
use crate::hub::{Hub, HubSettings, Registered};
use crate::issuer::Issuer;
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::state_dir::StateDir;
use crate::store::Store;
use crate::tokens::TokenStore;
use crate::view::MeshResources;
use crate::{operator_api, persist, proxy_api, resources_api};
use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_api::operator::MeshInfo;
use weft_certs::TrustDomain;

/// Where the state other than the control plane's own serving credential lives (on etcd, the CA and
/// the operator token too).
#[derive(Debug, Clone, Default)]
pub enum StoreOptions {
    /// The state directory (the default).
    #[default]
    Dir,
    /// etcd v3, shared by replicas.
    Etcd(EtcdOptions),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    pub store: StoreOptions,
    /// The key sealing the CA key in a shared store (`--store-key-file`); required with etcd.
    pub store_key_file: Option<PathBuf>,
    pub trust_domain: Option<TrustDomain>,
    pub config_dir: Option<PathBuf>,
    pub api_listen: SocketAddr,
    pub operator_listen: SocketAddr,
    pub debounce: Duration,
    pub grace_period: Duration,
    /// Where service virtual IPs come from.
    pub vip_range: crate::vips::Ipv4Range,
    /// Open the proxy API listener inside this network namespace (a pod network).
    pub api_netns: Option<String>,
    /// The proxy API addresses proxies are told to use, every replica's (default: `api_listen`).
    pub api_advertise: Vec<SocketAddr>,
    /// A second listener with only `/metrics`, `/live` and `/ready`, opened in `api_netns` if given.
    pub metrics_listen: Option<SocketAddr>,
    /// Lifetime of the control plane's own serving certificate; it is renewed at two thirds of it.
    pub serving_ttl: Duration,
    /// Connection limits of the proxy API.
    pub api_limits: proxy_api::Limits,
    /// The longest a join token may be created for.
    pub max_token_ttl: Duration,
    /// An operator request's body must arrive whole within this, else 408.
    pub operator_body_timeout: Duration,
    /// Connection cap and header-read timeout of the operator API and the metrics listener.
    pub operator_limits: crate::operator_api::Limits,
    /// The replica's id, its election lease and the leader's expiry sweep.
    pub leader: crate::leader::Settings,
}

/// What every handler shares.
pub struct ControlPlane {
    pub hub: Arc<Hub>,
    pub issuer: Issuer,
    pub metrics: Arc<Metrics>,
    pub operator_token: String,
    pub proxy_tls: Arc<rustls::ServerConfig>,
    /// The serving credential of the proxy API (renewed while running) and the verifier state its TLS
    /// config reads, including the revocation list.
    pub serving: weft_certs::Identity,
    pub serving_ttl: Duration,
    pub api_limits: proxy_api::Limits,
    /// An operator request's body must arrive whole within this, else 408.
    pub operator_body_timeout: Duration,
    pub operator_limits: crate::operator_api::Limits,
    /// Bumped whenever the revocation list changes: open proxy API connections re-check their peer.
    pub revocations_changed: tokio::sync::watch::Sender<u64>,
    pub state_dir: PathBuf,
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    store: std::sync::Mutex<Store>,
    config_dir: Option<PathBuf>,
    /// What `GET /v1/mesh` answers (services filled in per request).
    pub mesh_info: MeshInfo,
    /// Each connected proxy's latest request counts (`GET /v1/stats`).
    pub stats: crate::stats::StatsStore,
    /// The resources in force as of the last publish, for reads that must not wait for the store.
    resources: std::sync::RwLock<crate::store::Snapshot>,
    /// Applies being read and checked (off the store's lock): at most `MAX_READS` at once.
    pub document_reads: Arc<tokio::sync::Semaphore>,
    /// Where the state lives; it announces what other replicas changed.
    pub backend: SharedBackend,
    /// The replica's id, its election lease and the leader's expiry sweep.
    pub leader: crate::leader::Settings,
    /// Who leads, as this replica knows it (`GET /v1/mesh`).
    pub leadership: tokio::sync::watch::Receiver<crate::backend::election::Leadership>,
    /// Held while serving a state directory, so `weft-control migrate` refuses to copy it.
    _state_lock: Option<crate::state_lock::StateLock>,
}

impl ControlPlane {
    pub fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The resources in force as of the last change, read without the store's lock.
    pub fn resources(&self) -> crate::store::Snapshot {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Hands the resources in force to the push (and the certificate lifetime to the issuer), and
    /// to the readers of [`ControlPlane::resources`].
    pub fn publish(&self) {
        let (resources, revision, snapshot) = {
            let store = self.store();
            (store.mesh_resources(), store.revision(), store.snapshot())
        };
        *self.resources.write().unwrap_or_else(|e| e.into_inner()) = snapshot;
        let ttl = resources
            .mesh
            .certificate_ttl
            .map(|d| d.get())
            .unwrap_or(crate::issuer::DEFAULT_TTL);
        self.issuer.set_ttl(ttl);
        self.hub.set_resources(resources, revision);
    }
}

pub struct Bound {
    pub cp: Arc<ControlPlane>,
    api: TcpListener,
    operator: TcpListener,
    metrics: Option<TcpListener>,
    election: crate::backend::election::Election,
}

/// Opens (or creates) the state and binds both ports; nothing is served yet.
/// The push hub, with the registry the state directory kept.
fn new_hub(
    state: &StateDir,
    backend: &SharedBackend,
    etcd: Option<Arc<EtcdBackend>>,
    opts: &Options,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Arc<Hub>> {
    // On etcd the registry is the mesh's, one key per workload, followed once serving.
    let presence = match etcd {
        Some(etcd) => {
            let advertised = if opts.api_advertise.is_empty() {
                vec![opts.api_listen]
            } else {
                opts.api_advertise.clone()
            };
            let p = crate::presence::Presence::start(etcd, &advertised)
                .context("cannot start this replica's session in etcd")?;
            Some(Arc::new(p))
        }
        None => None,
    };
    let restored = match presence {
        Some(_) => Vec::new(),
        None => restore_registry(backend)?,
    };
    Ok(Hub::new(
        MeshResources::default(),
        0,
        state.bundle_pem.clone(),
        restored,
        HubSettings {
            debounce: opts.debounce,
            grace_period: opts.grace_period,
            store: Some(backend.clone()),
            trust_domain: state.trust_domain.clone(),
            vip_range: opts.vip_range,
            presence,
        },
        metrics.clone(),
    ))
}

pub async fn bind(opts: &Options) -> anyhow::Result<Bound> {
    let dir_files = match &opts.config_dir {
        Some(dir) => crate::config_dir::read_all(dir)
            .with_context(|| format!("cannot read --config-dir {}", dir.display()))?,
        None => Vec::new(),
    };
    let td = trust_domain(opts, &dir_files)?;
    let (state, backend, etcd, state_lock) = open_state(opts, td.as_ref())?;
    record_ca_fingerprint(&state);
    let metrics = Arc::new(Metrics::new());
    // A client certificate is optional on this port: a proxy without one can only present a join token.
    // One that expired while the control plane was away may still renew (and do nothing else).
    let proxy_tls = state
        .serving
        .server_config_with_expired_grace(crate::proxy_api::EXPIRED_RENEWAL_GRACE);
    let store = open_store(&state, &backend, opts, &dir_files)?;
    let hub = new_hub(&state, &backend, etcd, opts, &metrics)?;
    let mesh_info = mesh_info(&state, opts);
    let (tokens, claims, revocations) = issuer_stores(&state, &backend, opts)?;
    let StateDir {
        ca,
        bundle_pem,
        operator_token,
        serving,
        dir: state_dir,
        ..
    } = state;
    let issuer = Issuer::new(
        ca.ca,
        bundle_pem,
        tokens,
        claims,
        revocations,
        metrics.clone(),
    );
    let (api, operator, metrics_listener) = bind_listeners(opts).await?;
    // Stood for once the ports are bound: a replica that cannot serve does not lead.
    let election = backend.elect(&opts.leader.replica_id, opts.leader.lease_ttl);
    let cp = Arc::new(ControlPlane {
        hub,
        issuer,
        metrics,
        operator_token,
        proxy_tls,
        serving,
        serving_ttl: opts.serving_ttl,
        api_limits: opts.api_limits.fitted_to_open_files(),
        operator_body_timeout: opts.operator_body_timeout,
        operator_limits: opts.operator_limits,
        revocations_changed: tokio::sync::watch::channel(0).0,
        state_dir,
        shutdown: CancellationToken::new(),
        tasks: TaskTracker::new(),
        store: std::sync::Mutex::new(store),
        config_dir: opts.config_dir.clone(),
        mesh_info,
        stats: Default::default(),
        resources: Default::default(),
        document_reads: Arc::new(tokio::sync::Semaphore::new(crate::resources_api::MAX_READS)),
        backend,
        leader: opts.leader.clone(),
        leadership: election.subscribe(),
        _state_lock: state_lock,
    });
    cp.publish();
    cp.apply_revocations();
    Ok(Bound {
        cp,
        api,
        operator,
        metrics: metrics_listener,
        election,
    })
}

/// The state directory and the storage backend the options name. On etcd (which must answer, or the
/// replica does not start) the CA and the operator token come from etcd, opened with the store key;
/// the etcd backend is also returned as itself, for the replica's session.
fn open_state(
    opts: &Options,
    td: Option<&TrustDomain>,
) -> anyhow::Result<(
    StateDir,
    SharedBackend,
    Option<Arc<EtcdBackend>>,
    Option<crate::state_lock::StateLock>,
)> {
    match &opts.store {
        StoreOptions::Dir => {
            if let Some(f) = &opts.store_key_file {
                anyhow::bail!(
                    "--store-key-file {} is only for --store etcd://... (the state directory keeps the CA key in ca/ca.key)",
                    f.display()
                );
            }
            let state = StateDir::open_or_init(&opts.state_dir, td, opts.serving_ttl)?;
            let lock = match crate::state_lock::serving(&opts.state_dir) {
                Ok(l) => Some(l),
                Err(e @ crate::state_lock::LockError::Held { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, "the state directory is not locked: `weft-control migrate` cannot tell it is in use");
                    None
                }
            };
            Ok((state, Arc::new(DirBackend::new(&opts.state_dir)), None, lock))
        }
        StoreOptions::Etcd(e) => {
            let Some(file) = &opts.store_key_file else {
                anyhow::bail!(
                    "--store etcd://... needs --store-key-file FILE, the key that encrypts the mesh CA's key in etcd (make one with `weft-control store-key --out FILE` and give every replica a copy)"
                );
            };
            // Checked before etcd is reached: a bad key file fails at once, naming the file.
            let key = crate::store_key::StoreKey::read(file)?;
            let b = EtcdBackend::connect(e).context("cannot use the etcd store (--store)")?;
            tracing::info!(store = %b.describe(), "state kept in etcd");
            let shared =
                crate::shared_ca::load_or_create(&b, &key, td, crate::state_dir::CA_VALIDITY)?;
            let state = StateDir::open_shared(&opts.state_dir, shared, opts.serving_ttl)?;
            let b = Arc::new(b);
            Ok((state, b.clone(), Some(b), None))
        }
    }
}

/// The resources in force: the saved ones, replaced by the watched directory's when there is one (read
/// before anything is served, so no proxy ever sees a state without it).
fn open_store(
    state: &StateDir,
    backend: &SharedBackend,
    opts: &Options,
    dir_files: &[weft_api::operator::SourceFile],
) -> anyhow::Result<Store> {
    let mut store = Store::open_in(backend.clone(), state.trust_domain.as_str())?;
    if let Some(dir) = &opts.config_dir {
        if let Err(e) = store.reload_dir(dir_files) {
            anyhow::bail!("--config-dir {} refused: {e}", dir.display());
        }
    }
    Ok(store)
}

/// The trust domain: the flag, else a MeshConfig in the watched directory (for a new mesh).
fn trust_domain(
    opts: &Options,
    dir_files: &[weft_api::operator::SourceFile],
) -> anyhow::Result<Option<TrustDomain>> {
    Ok(
        match (&opts.trust_domain, crate::store::trust_domain_in(dir_files)) {
            (Some(td), _) => Some(td.clone()),
            (None, Some(td)) => Some(
                TrustDomain::new(&td)
                    .with_context(|| format!("MeshConfig trustDomain {td:?} in --config-dir"))?,
            ),
            (None, None) => None,
        },
    )
}

/// Proxies may pin the mesh CA by its fingerprint instead of a bundle file (control.ca_fingerprint).
fn record_ca_fingerprint(state: &StateDir) {
    if let Some(root) = state.serving.bundle().roots().first() {
        let fp = weft_certs::pin::fingerprint(root.as_ref());
        tracing::info!(fingerprint = %fp, "mesh CA");
        let _ = persist::write_atomic(
            &state.path("ca/fingerprint"),
            format!("{fp}\n").as_bytes(),
            0o644,
        );
    }
}

fn restore_registry(backend: &SharedBackend) -> anyhow::Result<Vec<Registered>> {
    let restored: Vec<Registered> = backend::get_json(&**backend, Collection::Registry)?
        .map(|(r, _)| r)
        .unwrap_or_default();
    if !restored.is_empty() {
        tracing::info!(
            workloads = restored.len(),
            "restored the workload registry; entries not reclaimed within the grace period are removed"
        );
    }
    Ok(restored)
}

/// What the issuer keeps: join tokens, workload claims and revocations.
fn issuer_stores(
    state: &StateDir,
    backend: &SharedBackend,
    opts: &Options,
) -> anyhow::Result<(TokenStore, crate::claims::ClaimStore, Revocations)> {
    let mut tokens = TokenStore::open_in(backend.clone(), state.trust_domain.clone())?;
    tokens.set_max_ttl(opts.max_token_ttl);
    let claims = crate::claims::ClaimStore::open_in(backend.clone())?;
    let revocations = Revocations::open_in(Some(backend.clone()))?;
    Ok((tokens, claims, revocations))
}

fn mesh_info(state: &StateDir, opts: &Options) -> MeshInfo {
    MeshInfo {
        trust_domain: state.trust_domain.to_string(),
        ca_fingerprint: state
            .serving
            .bundle()
            .roots()
            .first()
            .map(|r| weft_certs::pin::fingerprint(r.as_ref()))
            .unwrap_or_default(),
        bundle_pem: state.bundle_pem.clone(),
        proxy_address: opts
            .api_advertise
            .first()
            .copied()
            .unwrap_or(opts.api_listen),
        proxy_addresses: if opts.api_advertise.len() > 1 {
            opts.api_advertise.clone()
        } else {
            Vec::new()
        },
        services: Vec::new(),
    }
}

/// The proxy API (in `--api-netns` when given), the operator API and the optional metrics listener.
async fn bind_listeners(
    opts: &Options,
) -> anyhow::Result<(TcpListener, TcpListener, Option<TcpListener>)> {
    let api = match &opts.api_netns {
        None => TcpListener::bind(opts.api_listen).await,
        Some(ns) => crate::netns::bind_in(ns, opts.api_listen),
    }
    .with_context(|| match &opts.api_netns {
        None => format!("cannot listen on {} (--api-listen)", opts.api_listen),
        Some(ns) => format!(
            "cannot listen on {} in network namespace {ns} (--api-listen, --api-netns)",
            opts.api_listen
        ),
    })?;
    let metrics = match opts.metrics_listen {
        None => None,
        Some(addr) => Some(
            match &opts.api_netns {
                None => TcpListener::bind(addr).await,
                Some(ns) => crate::netns::bind_in(ns, addr),
            }
            .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?,
        ),
    };
    let operator = TcpListener::bind(opts.operator_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--operator-listen)",
                opts.operator_listen
            )
        })?;
    Ok((api, operator, metrics))
}

impl Bound {
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.local_addr().ok()
    }

    /// Serves until the shutdown token is cancelled, then closes every stream and waits briefly.
    pub async fn serve(self) {
        let Bound {
            cp,
            api,
            operator,
            metrics,
            election,
        } = self;
        tracing::info!(addr = ?api.local_addr().ok(), trust_domain = %cp.issuer.trust_domain(), "proxy API listening (TLS, HTTP/2)");
        tracing::info!(addr = ?operator.local_addr().ok(), "operator API listening (HTTP)");
        let _watcher = match &cp.config_dir {
            Some(dir) => match resources_api::watch_dir(&cp, dir.clone()) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "cannot watch the config directory; changes to it need a restart");
                    None
                }
            },
            None => None,
        };
        tokio::spawn(cp.hub.clone().run(cp.shutdown.clone()));
        let presence = cp.hub.settings.presence.clone();
        // Followed past the shutdown signal: proxies moving to other replicas are seen leaving.
        let mesh_stop = CancellationToken::new();
        if let Some(p) = &presence {
            tokio::spawn(cp.hub.clone().run_mesh(p.clone(), mesh_stop.clone()));
        }
        tokio::spawn(crate::follow::run(cp.clone()));
        let leader = tokio::spawn(crate::leader::run(cp.clone(), election));
        tokio::spawn(crate::serving::run(cp.clone()));
        tokio::spawn(proxy_api::run(api, cp.clone()));
        tokio::spawn(operator_api::run(operator, cp.clone()));
        if let Some(m) = metrics {
            tracing::info!(addr = ?m.local_addr().ok(), "metrics listening (HTTP: /metrics, /live, /ready)");
            tokio::spawn(operator_api::run_metrics(m, cp.clone()));
        }
        cp.shutdown.cancelled().await;
        // The leadership goes first (it resigns on the same signal), so another replica takes over
        // while this one closes its streams.
        let _ = tokio::time::timeout(Duration::from_secs(5), leader).await;
        tracing::info!("shutting down: closing proxy streams");
        cp.hub.close_all();
        if let Some(p) = presence {
            // Its proxies register through other replicas first (taking their keys over, so their
            // endpoints never leave the views); the workloads left leave the registry now, not a
            // lease TTL later.
            cp.hub.wait_moved(SHUTDOWN_MOVE_WAIT).await;
            let _ = tokio::task::spawn_blocking(move || p.end()).await;
            mesh_stop.cancel();
        }
        cp.tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), cp.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = cp.tasks.len(),
                "some connections did not close in time"
            );
        }
    }
}

/// How long a replica shutting down waits for its proxies to register through another replica.
const SHUTDOWN_MOVE_WAIT: Duration = Duration::from_secs(2);

/// Accepts connections until shutdown, at most `max_connections` at once (the rest are closed at once and
/// logged), each handled by `handle` in a tracked task.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    cp: &ControlPlane,
    what: &'static str,
    max_connections: usize,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (tcp, addr) = tokio::select! {
            _ = cp.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed on the {what}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, limit = max_connections, "{what} connection refused: connection limit reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let fut = handle(tcp, addr);
        cp.tasks.spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}
