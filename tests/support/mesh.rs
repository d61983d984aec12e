//! Proxies that get identity and config from a running control plane: a builder that writes the
//! control-mode config (join token, pinned CA, workload registration, service listeners) and starts
//! `weft-proxy` with it.

use crate::control::ControlProc;
use crate::net::free_addr;
use crate::pki::TempDir;
use crate::proxy::{launch_wrapped, Launch, ProxyProc};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use weft_certs::SpiffeId;

pub struct MeshProxyBuilder {
    name: String,
    namespace: String,
    service_account: String,
    labels: Vec<(String, String)>,
    app_ports: Vec<u16>,
    token: Option<String>,
    control: SocketAddr,
    bundle: PathBuf,
    tunnel: SocketAddr,
    services: Vec<(SocketAddr, String, u16, &'static str)>,
    readiness: Option<String>,
    extra: String,
    dir: Option<TempDir>,
    fingerprint: Option<String>,
    env: Vec<(String, String)>,
    /// `control.address` as written, instead of the control plane's address.
    control_yaml: Option<String>,
    /// A hosts file the proxy sees as /etc/hosts (a mount namespace of its own).
    hosts: Option<PathBuf>,
}

impl MeshProxyBuilder {
    /// A proxy for workload `name` with identity `namespace/service_account`, labelled `app=<sa>`.
    pub fn new(cp: &ControlProc, name: &str, namespace: &str, service_account: &str) -> Self {
        MeshProxyBuilder {
            name: name.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            labels: vec![("app".into(), service_account.into())],
            app_ports: Vec::new(),
            token: None,
            control: cp.api,
            bundle: cp.bundle_path(),
            tunnel: free_addr(),
            services: Vec::new(),
            readiness: None,
            extra: String::new(),
            dir: None,
            fingerprint: None,
            env: Vec::new(),
            control_yaml: None,
            hosts: None,
        }
    }

    /// An environment variable for the proxy process (e.g. libfaketime's, to skew its clock).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn label(mut self, k: &str, v: &str) -> Self {
        self.labels.push((k.into(), v.into()));
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// The app behind this proxy listens on `port` (registered; probed by TCP connect).
    pub fn app_port(mut self, port: u16) -> Self {
        self.app_ports.push(port);
        if self.readiness.is_none() {
            self.readiness = Some(format!("{{tcp: {{port: {port}}}}}"));
        }
        self
    }

    /// A local listener for `service` (namespace default) port `port`.
    pub fn service(mut self, service: &str, port: u16, protocol: &'static str) -> Self {
        self.services
            .push((free_addr(), service.to_string(), port, protocol));
        self
    }

    pub fn extra_yaml(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        self.extra.push('\n');
        self
    }

    /// Reuses a directory (and so the proxy's cache) from an earlier run.
    pub fn in_dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Pins the mesh CA by this fingerprint instead of the bundle file.
    pub fn ca_fingerprint(mut self, fingerprint: &str) -> Self {
        self.fingerprint = Some(fingerprint.to_string());
        self
    }

    /// `control.address` as written (a list, a name), instead of the control plane's address.
    pub fn control_address(mut self, yaml: &str) -> Self {
        self.control_yaml = Some(yaml.to_string());
        self
    }

    /// Runs the proxy in a mount namespace of its own where `hosts` is /etc/hosts (as `ip netns exec`
    /// does with /etc/netns/NAME/hosts), for names that resolve to addresses the test chooses.
    pub fn hosts_file(mut self, hosts: PathBuf) -> Self {
        self.hosts = Some(hosts);
        self
    }

    pub fn with_tunnel(mut self, addr: SocketAddr) -> Self {
        self.tunnel = addr;
        self
    }

    pub fn id(&self) -> SpiffeId {
        SpiffeId::parse(&format!(
            "spiffe://mesh.test/ns/{}/sa/{}",
            self.namespace, self.service_account
        ))
        .expect("valid id")
    }

    /// Writes the config and starts the proxy without waiting for readiness.
    pub fn launch(mut self) -> ProxyProc {
        let dir = self
            .dir
            .take()
            .unwrap_or_else(|| TempDir::new(&format!("mesh-{}", self.name)));
        let (admin, health) = (free_addr(), free_addr());
        let token_file = dir.path().join("join-token");
        if let Some(t) = &self.token {
            std::fs::write(&token_file, t).expect("write token");
        }
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let ports: Vec<String> = self.app_ports.iter().map(|p| p.to_string()).collect();
        let mut yaml = format!(
            "control:\n  address: {control}\n  {pin}\n  token_file: {token}\n  state_dir: {state}\nworkload:\n  name: {name}\n  namespace: {ns}\n  service_account: {sa}\n  labels: {{{labels}}}\n  address: 127.0.0.1\n  ports: [{ports}]\n",
            control = self
                .control_yaml
                .clone()
                .unwrap_or_else(|| self.control.to_string()),
            pin = match &self.fingerprint {
                Some(fp) => format!("ca_fingerprint: \"{fp}\""),
                None => format!("ca_bundle: {}", self.bundle.display()),
            },
            token = token_file.display(),
            state = dir.path().join("cache").display(),
            name = self.name,
            ns = self.namespace,
            sa = self.service_account,
            labels = labels.join(", "),
            ports = ports.join(", "),
        );
        if let Some(r) = &self.readiness {
            yaml.push_str(&format!("  readiness: {r}\n"));
        }
        yaml.push_str(&format!(
            "tunnel:\n  listen: {}\nadmin: {admin}\nhealth: {health}\n",
            self.tunnel
        ));
        if !self.services.is_empty() {
            yaml.push_str("outbound:\n");
            for (listen, svc, port, proto) in &self.services {
                yaml.push_str(&format!(
                    "  - listen: {listen}\n    service: {svc}\n    namespace: default\n    port: {port}\n    protocol: {proto}\n"
                ));
            }
        }
        yaml.push_str(&self.extra);
        let config = dir.path().join("proxy.yaml");
        std::fs::write(&config, &yaml).expect("write proxy config");
        let id = self.id();
        let wrapper: Vec<String> = match &self.hosts {
            Some(h) => vec![
                "unshare".into(),
                "--mount".into(),
                "--propagation".into(),
                "private".into(),
                "sh".into(),
                "-c".into(),
                r#"mount --bind "$0" /etc/hosts && exec "$@""#.into(),
                h.display().to_string(),
            ],
            None => Vec::new(),
        };
        launch_wrapped(
            Launch {
                name: self.name,
                config,
                dir,
                tunnel: self.tunnel,
                admin,
                health,
                outbound: self.services.iter().map(|s| s.0).collect(),
                id,
                worker_threads: None,
                env: self.env,
            },
            &wrapper,
        )
    }

    /// Starts the proxy and waits until it is ready.
    pub fn start(self) -> ProxyProc {
        let mut p = self.launch();
        p.wait_ready(Duration::from_secs(30));
        p
    }
}

/// The `backend` service the mesh tests use: port 9080 over HTTP, delivered to the app's real port.
pub fn backend_service(app_port: u16) -> String {
    format!(
        "apiVersion: weft.dev/v1
kind: Service
metadata:
  name: backend
spec:
  ports:
    - port: 9080
      targetPort: {app_port}
      protocol: http
  selector:
    app: backend
"
    )
}
